"""Memory and time of `care validate` and `care score` as the input grows: both stream, so peak RSS stays flat.

    python benchmarks/score_memory.py [--sessions 1000 20000] [--work DIR] [--busy K] [--json OUT]

For each size, `care synth --sessions N` writes a corpus; then `care validate` and `care score --out` run on it
as child processes, each measured with `/usr/bin/time -v` (or psutil; see synth_validate.py). `care score` uses a
release package of the `tiny` preset (the shipped base exported to ONNX and packaged, built once into --work).
Prints one table row per command and size: wall seconds, milliseconds per session and peak RSS.
`--busy K` keeps K more processes spinning on the cores for the whole measurement (the shared-machine case).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synth_validate import _care, measure  # noqa: E402


def tiny_package(work: Path) -> Path:
    """The `tiny` preset's shipped base, exported and packaged as a release with params.yaml's scoring config
    (once per --work)."""
    from care.data.instrument import instrument_path
    from care.model.presets import prepare_base
    from care.model.prompts import PromptConfig
    from care.params import load_params
    from care.release import build_package, export_onnx
    from care.release.package import ScoringConfig

    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    pkg = work / "package"
    if not (pkg / "manifest.json").is_file():
        base = Path(prepare_base(params)[0])
        export_onnx(base, work / "onnx")
        build_package(pkg, work / "onnx", base, instrument_path("wai-sr"),
                      {"base_model": "tiny", "scoring": ScoringConfig(
                          **dict(PromptConfig.from_params(params.model)), languages=["zh", "en"], prompt_version="1",
                          readout=params.eval.readout, grounded_quotes=params.eval.grounded_quotes,
                      ).model_dump(mode="json")})
    return pkg


def _spin() -> None:  # pragma: no cover - a busy process
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--work", type=Path, default=None, help="keep the package and corpora here (default: temp dir)")
    ap.add_argument("--busy", type=int, default=0, help="processes that keep a core busy each while measuring")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="care-score-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    care = _care()
    pkg = tiny_package(work)
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    rows = []
    try:
        for p in busy:
            p.start()
        for n in args.sessions:
            corpus = work / f"corpus-{n}"
            if not (corpus / "sessions.jsonl").is_file():
                synth = measure([*care, "synth", "--out", str(corpus), "--sessions", str(n)])
                if synth["rc"]:
                    print(f"synth failed: {synth['stderr'][-500:]}", file=sys.stderr)
                    return 1
            data = corpus / "sessions.jsonl"
            out = corpus / "scores.jsonl"
            out.unlink(missing_ok=True)
            mb = data.stat().st_size / 2**20
            for name, cmd in (("validate", [*care, "validate", str(data)]),
                              ("score", [*care, "score", str(data), "--model", str(pkg), "--out", str(out)])):
                r = measure(cmd)
                if r["rc"]:
                    print(f"{name} failed (rc={r['rc']}): {r['stderr'][-500:]}", file=sys.stderr)
                    return 1
                rows.append({"command": name, "sessions": n, "input_mb": round(mb, 1), "wall_s": round(r["wall_s"], 1),
                             "ms_per_session": round(1000 * r["wall_s"] / n, 2),
                             "peak_rss_mb": round(r["peak_rss_mb"]), "method": r["method"]})
    finally:
        for p in busy:
            p.terminate()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"{'command':9s} {'sessions':>8s} {'input MB':>9s} {'wall s':>8s} {'ms/session':>11s} {'peak RSS MB':>12s}")
    for r in rows:
        print(f"{r['command']:9s} {r['sessions']:8d} {r['input_mb']:9.1f} {r['wall_s']:8.1f} {r['ms_per_session']:11.2f} "
              f"{r['peak_rss_mb']:12d}")
    print(f"load: 1-min load average {load:.1f} at the end on {os.cpu_count()} cores "
          f"({args.busy} busy processes of this benchmark); RSS by {rows[0]['method'] if rows else '?'}")
    if args.json:
        args.json.write_text(json.dumps({"busy": args.busy, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
