"""Release manifests: sha256 and size of every file in a package, and their verification.

`manifest.json` lists every file of the package except itself and its optional signature `manifest.sig`
(see `care.release.signing`). A package is accepted only when its entries are exactly the listed regular
files (plus the manifest and the signature) and every size and sha256 matches: a missing, extra or changed
file, a symbolic link, a FIFO, a device node, a socket, an empty or unlisted directory is refused.

`read_verified` reads each file ONCE, hashes those bytes and hands them back, so a caller builds from the
bytes it verified, never from a path that could be swapped after the check (`care score` does this).
Files are opened without following symbolic links and without blocking (a FIFO swapped in is refused,
never waited on).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from care.errors import CareError, label
from care.fsutil import atomic_write_json, open_regular

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # a signature over manifest.json; never listed in it
UNLISTED = (MANIFEST, SIGNATURE)
MAX_MANIFEST_BYTES = 64 << 20
MAX_SIGNATURE_BYTES = 1 << 20
_CHUNK = 1 << 20
_SHOWN = 20  # problems named in the refusal message


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def scan(root: str | Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """(regular files, directories, other entries as (REL, what it is)), relative POSIX paths, sorted.

    Never follows a symbolic link and never opens an entry."""
    root = Path(root)
    files, dirs, other = [], [], []
    stack = [""]
    while stack:
        sub = stack.pop()
        with os.scandir(root / sub if sub else root) as it:
            for entry in it:
                rel = f"{sub}/{entry.name}" if sub else entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISREG(mode):
                    files.append(rel)
                elif stat.S_ISDIR(mode):
                    dirs.append(rel)
                    stack.append(rel)
                else:
                    other.append((rel, _kind(mode)))
    return sorted(files), sorted(dirs), sorted(other)


def package_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every regular file under `root` except the manifest and signature, sorted.

    Raises on anything that is not a regular file or a directory (a package never holds one)."""
    files, _dirs, other = scan(root)
    if other:
        raise CareError(f"{Path(root) / other[0][0]}: {_not_allowed(other[0][1])}")
    return [rel for rel in files if rel not in UNLISTED]


def write_manifest(root: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `root` and write `root/manifest.json` = metadata + {"files": {...}}."""
    root = Path(root)
    files = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in package_files(root)}
    manifest = {**metadata, "files": files}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def _not_allowed(kind: str) -> str:
    if kind == "a symbolic link":
        return "symbolic links are not allowed in a package"
    return f"{kind}: only regular files are allowed in a package"


def read_small(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (CareError otherwise; a symlink is refused)."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        raise CareError(f"{path}: no {what}") from None
    except OSError as exc:  # ELOOP: a symbolic link
        raise CareError(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__}); "
                        "symbolic links are not allowed") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CareError(f"{path}: the {what} is larger than {limit} bytes")
    return data


def parse_manifest(data: bytes, path: str | Path) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: also numbers over the digit limit
        raise CareError(f"{path}: manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CareError(f"{path}: manifest has no 'files' mapping")
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise CareError(f"{path}: no manifest; not a release package")
    return parse_manifest(read_small(path, MAX_MANIFEST_BYTES, "manifest"), path)


@dataclass
class VerifiedPackage:
    """A package whose every file matched its manifest, with the bytes that were hashed.

    `data[rel]`: the bytes of a file read into memory; `copies[rel]`: a private copy (in the caller's
    directory) of a file written from the very chunks that were hashed. `signature`: `manifest.sig`'s bytes."""

    root: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    data: dict[str, bytes] = field(default_factory=dict)
    copies: dict[str, Path] = field(default_factory=dict)
    signature: bytes | None = None

    def text(self, rel: str) -> str:
        try:
            return self.data[rel].decode("utf-8")
        except UnicodeDecodeError:
            raise CareError(f"{self.root / rel}: not UTF-8 text") from None


def _hash_fd(fd: int, keep: bool, copy_to: Path | None) -> tuple[str, int, bytes | None]:
    h, size, parts = hashlib.sha256(), 0, []
    out = None
    if copy_to is not None:
        copy_to.parent.mkdir(parents=True, exist_ok=True)
        out = open(copy_to, "xb")  # never over an existing entry
    try:
        with os.fdopen(fd, "rb", closefd=True) as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                if keep:
                    parts.append(chunk)
                if out is not None:
                    out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest(), size, (b"".join(parts) if keep else None)


def read_verified(root: str | Path, *, keep: bool = True, copy_dir: str | Path | None = None,
                  copy: Callable[[str], bool] = lambda rel: False) -> VerifiedPackage:
    """Verify `root` against its manifest, reading every file once; raise CareError naming each mismatch.

    With `keep`, the verified bytes of each file are returned in `.data`, except files for which `copy(rel)`
    is true: those are written, chunk by chunk as they are hashed, to `copy_dir/rel` (a private directory
    the caller owns) and returned in `.copies`. Nothing is returned for a package that does not verify.
    """
    root = Path(root)
    if not root.is_dir():
        raise CareError(f"{root}: no such package directory")
    if not os.path.lexists(root / MANIFEST):
        raise CareError(f"{root / MANIFEST}: no manifest; not a release package")
    manifest_bytes = read_small(root / MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    manifest = parse_manifest(manifest_bytes, root / MANIFEST)
    listed = manifest["files"]
    files, dirs, other = scan(root)
    present = set(files) - set(UNLISTED)
    needed_dirs = {"/".join(rel.split("/")[:i]) for rel in listed for i in range(1, rel.count("/") + 1)}
    odd = {rel for rel, _ in other}
    problems = [f"{label(rel)}: missing" for rel in sorted(set(listed) - present - odd)]
    problems += [f"{label(rel)}: not in the manifest" for rel in sorted(present - set(listed))]
    problems += [f"{label(rel)}: {_not_allowed(kind)}" for rel, kind in other]
    problems += [f"{label(d)}/: directory not in the manifest" for d in dirs if d not in needed_dirs]
    out = VerifiedPackage(root, manifest, manifest_bytes)
    for rel in sorted(set(listed) & present):
        entry = listed[rel]
        if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
            problems.append(f"{rel}: manifest entry malformed")
            continue
        try:
            fd = open_regular(root / rel)
        except (CareError, OSError):
            problems.append(f"{rel}: not a regular file")
            continue
        size = os.fstat(fd).st_size
        if size != entry["size"]:
            os.close(fd)
            problems.append(f"{rel}: size {size} != manifest {label(str(entry['size']), 20)}")
            continue
        spill = keep and copy_dir is not None and copy(rel)
        sha, read, data = _hash_fd(fd, keep and not spill, Path(copy_dir) / rel if spill else None)
        if sha != entry["sha256"] or read != size:
            problems.append(f"{rel}: sha256 does not match the manifest")
        elif spill:
            out.copies[rel] = Path(copy_dir) / rel
        elif data is not None:
            out.data[rel] = data
    if SIGNATURE in files:
        out.signature = read_small(root / SIGNATURE, MAX_SIGNATURE_BYTES, "signature")
    if problems:
        shown = problems[:_SHOWN] + ([f"and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
        raise CareError(f"{root}: package does not match its manifest ({len(problems)} problem(s)): " + "; ".join(shown))
    return out


def verify_package(root: str | Path) -> dict[str, Any]:
    """Check every entry against the manifest (`read_verified` without keeping bytes); returns the manifest."""
    return read_verified(root, keep=False).manifest
