"""Benchmark: `care synth --sessions 10000` then `care validate` on the result; wall seconds and peak RSS.

    python benchmarks/synth_validate.py [--sessions 10000] [--utterances 24] [--language zh] [--json OUT]

Each command runs as a child process, measured with `/usr/bin/time -v` when it is installed
(`apt-get install -y time`), otherwise by polling the process tree with psutil. Prints one line per
command and, with --json, writes the numbers (no transcript text) to a file. The targets for the default
size: synth well under 60 s and under 2 GB peak memory on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GNU_TIME = "/usr/bin/time"


def _care() -> list[str]:
    exe = shutil.which("care") or str(Path(sys.executable).with_name("care"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "care_cli.main"]


def _run_gnu_time(cmd: list[str]) -> dict:
    proc = subprocess.run([GNU_TIME, "-v", *cmd], capture_output=True, text=True)
    err = proc.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    tail = [ln for ln in err.splitlines() if not ln.startswith("\t") and "Command being timed" not in ln]
    return {"rc": proc.returncode, "wall_s": seconds, "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
            "method": "gnu-time", "stdout": proc.stdout.strip(), "stderr": "\n".join(tail).strip()}


def _run_psutil(cmd: list[str]) -> dict:
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - start, "peak_rss_mb": peak / 2**20,
            "method": "psutil", "stdout": out.strip(), "stderr": err.strip()}


def measure(cmd: list[str]) -> dict:
    return _run_gnu_time(cmd) if os.access(GNU_TIME, os.X_OK) else _run_psutil(cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--utterances", type=int, default=24)
    ap.add_argument("--language", default="zh")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    care = _care()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="care-synth-bench-") as tmp:
        out = Path(tmp) / "corpus"
        synth = measure([*care, "synth", "--out", str(out), "--sessions", str(args.sessions),
                         "--utterances", str(args.utterances), "--language", args.language,
                         "--seed", str(args.seed)])
        results["synth"] = synth
        if synth["rc"] != 0:
            print(f"synth failed (rc={synth['rc']}): {synth['stderr'][-500:]}", file=sys.stderr)
            return 1
        size_mb = (out / "sessions.jsonl").stat().st_size / 2**20
        validate = measure([*care, "validate", str(out / "sessions.jsonl")])
        results["validate"] = validate
        missing = validate["rc"] != 0 and re.search(r"No such command|No module named 'care.data.validation'",
                                                    validate["stderr"])
        if missing:
            validate["skipped"] = "care validate is not available in this checkout"

    print(f"corpus: {args.sessions} sessions, {args.utterances} mean utterances, {args.language}, "
          f"{size_mb:.1f} MB sessions.jsonl")
    for name, r in results.items():
        if r.get("skipped"):
            print(f"{name:9s} skipped: {r['skipped']}")
            continue
        status = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']}"
        print(f"{name:9s} wall {r['wall_s']:.2f} s  peak RSS {r['peak_rss_mb']:.0f} MB  [{r['method']}] {status}")
    if args.json:
        payload = {"arguments": vars(args) | {"json": str(args.json)}, "jsonl_mb": round(size_mb, 2),
                   "results": {k: {f: v[f] for f in ("rc", "wall_s", "peak_rss_mb", "method")} | (
                       {"skipped": v["skipped"]} if v.get("skipped") else {}) for k, v in results.items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    failed = [k for k, r in results.items() if r["rc"] != 0 and not r.get("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
