"""Zero the CUDA kernels of other GPU architectures in a shared library, keeping its layout: what lets
onnxruntime-gpu's CUDA provider (284 MB, kernels for sm_75 to sm_120) travel to a lent H200 (sm_90) in two device
calls instead of five. The driver picks the kernel image of the device's architecture from each fatbin and never
reads the others; offsets and sizes are unchanged, only the other images' bytes become zeros, which compress away.

    python benchmarks/strip_fatbin.py IN.so OUT.so 90        # keep sm_90 (and sm_90a) images

A fatbin is a header (magic 0xBA55ED50, version, header size, size of the entries) and entries, each a header
(kind, header size, payload size, ..., the architecture at byte 28) and its payload (cuobjdump's layout).
"""

from __future__ import annotations

import struct
import sys

MAGIC = struct.pack("<I", 0xBA55ED50)


def strip(data: bytearray, keep: set[int]) -> tuple[int, int]:
    """Zero in place every fatbin entry whose architecture is not in `keep`; (bytes zeroed, bytes kept)."""
    pos = zeroed = kept = 0
    while (start := data.find(MAGIC, pos)) >= 0:
        _version, header, size = struct.unpack_from("<HHQ", data, start + 4)
        if header != 16 or start + header + size > len(data):
            pos = start + 4
            continue
        entry, end = start + header, start + header + size
        while entry < end:
            _kind, _unknown, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            if entry_header == 0:
                break
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            body = slice(entry + entry_header, entry + entry_header + payload)
            if arch in keep:
                kept += payload
            else:
                data[body] = bytes(payload)
                zeroed += payload
            entry += entry_header + payload
        pos = end
    return zeroed, kept


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst, archs = argv
    data = bytearray(open(src, "rb").read())
    zeroed, kept = strip(data, {int(a) for a in archs.split(",")})
    if not kept:
        print(f"{src}: no kernel image for sm_{archs}; nothing written", file=sys.stderr)
        return 1
    open(dst, "wb").write(data)
    print(f"{dst}: zeroed {zeroed / 1e6:.1f} MB of other architectures, kept {kept / 1e6:.1f} MB (sm_{archs})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
