"""The README's main command on the default data: wall time and peak memory.

    python benchmarks/cv_default.py [--keep DIR]    # a fresh clone of HEAD: `bash scripts/setup.sh`, then
                                                    # `dvc repro` (the whole pipeline, release included);
                                                    # --keep leaves the clone (metrics/, release/) in DIR
    python benchmarks/cv_default.py --cv-only [--set KEY=VALUE ...]
                                                    # `care train --no-release` in this checkout

Both run in a throw-away ZenML store and an empty CARE cache (no fold is reused), under /usr/bin/time -v
(peak RSS: the largest process). The fresh clone reuses pip's download cache, as a machine that has
installed the stack before would. Prints one line per phase and the cross-validated means.
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

ROOT = Path(__file__).resolve().parents[1]
TIME = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_STORE_", "ZENML_SERVER", "VIRTUAL_ENV"))}
    env.update(ZENML_ANALYTICS_OPT_IN="false", ZENML_CONFIG_PATH=str(work / "zenml"), DVC_NO_ANALYTICS="1",
               ZENML_REPOSITORY_PATH=str(work / "zenml-repo"), CARE_CACHE_DIR=str(work / "cache"),
               DVC_SITE_CACHE_DIR=str(work / "dvc-site"))
    (work / "zenml-repo").mkdir(parents=True, exist_ok=True)
    return env


def _timed(cmd: list[str], cwd: Path, env: dict, label: str) -> tuple[int, float, float | None]:
    start = time.perf_counter()
    proc = subprocess.run(TIME + cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    mb = int(peak.group(1)) / 1024 if peak else None
    print(f"{label}: exit {proc.returncode}, wall {wall:.1f} s, peak RSS {f'{mb:.0f} MB' if mb else 'n/a'}", flush=True)
    if proc.returncode:
        print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode, wall, mb


def _means(cv: Path) -> None:
    if not cv.exists():
        return
    detail = json.loads(cv.read_text("utf-8"))
    for name, block in [("model", detail["mean"])] + sorted(detail["baselines"].items()):
        cells = ", ".join(f"{d} r {v.get('pearson')} mse {v.get('mse')}" for d, v in block.items())
        print(f"  {name}: {cells}")


def fresh_clone(keep: Path | None) -> int:
    work = keep.resolve() if keep else Path(tempfile.mkdtemp(prefix="care-fresh-"))
    if keep and keep.exists():
        raise SystemExit(f"--keep {keep}: exists; name a new directory")
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = _env(work)
    rc, setup_wall, setup_mb = _timed(["bash", "scripts/setup.sh"], clone, env, "set-up (scripts/setup.sh)")
    total = setup_wall
    if rc == 0:
        env["PATH"] = f"{clone / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        rc, repro_wall, repro_mb = _timed([str(clone / ".venv" / "bin" / "dvc"), "repro"], clone, env, "dvc repro")
        total += repro_wall
        print(f"fresh clone total: {total:.1f} s ({total / 60:.1f} min); peak RSS {max(filter(None, [setup_mb, repro_mb]), default=0):.0f} MB")
        _means(clone / "metrics" / "cv_detail.json")
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return rc


def cv_only(extra: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="care-cv-bench-"))
    care = str(Path(sys.executable).parent / "care")
    cmd = [care, "train", "--no-release", "--metrics-dir", str(work / "metrics"), "--plots-dir", str(work / "plots"), *extra]
    rc, _, _ = _timed(cmd, ROOT, _env(work), "care train --no-release")
    _means(work / "metrics" / "cv_detail.json")
    shutil.rmtree(work, ignore_errors=True)
    return rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv-only", action="store_true", help="care train --no-release in this checkout")
    ap.add_argument("--keep", type=Path, help="fresh clone: keep it (and its ZenML store) in this new directory")
    args, extra = ap.parse_known_args()
    sys.exit(cv_only(extra) if args.cv_only else fresh_clone(args.keep))


if __name__ == "__main__":
    main()
