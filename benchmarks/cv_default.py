"""Cross-validation on the default data with the tiny preset: wall time and peak memory.

Runs `care train --no-release` (validate, 5 folds of fine-tune/score/metrics, aggregate, gate) in a
throw-away ZenML store and a fresh cache (so the tiny base is built too, and no fold is reused), under
/usr/bin/time -v when available. Extra arguments go to `care train` (e.g. --set train.targets=score_only).

    python benchmarks/cv_default.py [--set KEY=VALUE ...]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(extra: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="care-cv-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_STORE_", "ZENML_SERVER"))}
    env.update(ZENML_ANALYTICS_OPT_IN="false", ZENML_CONFIG_PATH=str(work / "zenml"),
               ZENML_REPOSITORY_PATH=str(work / "zenml-repo"), CARE_CACHE_DIR=str(work / "cache"))
    care = str(Path(sys.executable).parent / "care")
    cmd = [care, "train", "--no-release", "--metrics-dir", str(work / "metrics"), "--plots-dir", str(work / "plots"), *extra]
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    proc = subprocess.run(timer + cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    print(f"exit: {proc.returncode}")
    print(f"wall: {wall:.1f} s")
    print(f"peak RSS: {int(peak.group(1)) / 1024:.0f} MB" if peak else "peak RSS: n/a (install GNU time)")
    cv = work / "metrics" / "cv_detail.json"
    if cv.exists():
        print(cv.read_text())
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main(sys.argv[1:])
