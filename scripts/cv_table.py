"""Markdown tables of a cv_detail.json: the model and every baseline, per item and per dimension, Pearson r,
Spearman rho and MSE as mean ± std over folds (n = held-out pairs over all folds).

    python scripts/cv_table.py metrics-esconv/cv_detail.json [--instrument esconv-seeker]

Numbers only: cv_detail.json holds no transcript text. Used for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fmt(mean, std) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def _rows(name, mean: dict, std: dict | None, keys: list[str]) -> list[str]:
    out = []
    for key in keys:
        m, s = mean.get(key) or {}, (std or {}).get(key) or {}
        cells = [_fmt(m.get(x), s.get(x)) for x in ("pearson", "spearman", "mse")]
        out.append(f"| {key} | {name} | " + " | ".join(cells) + " |")
    return out


def tables(cv: dict, items: list[str], dims: list[str]) -> str:
    head = "| {} | predictor | Pearson r | Spearman rho | MSE |\n|---|---|---|---|---|"
    names = list(cv["baselines"])
    lines = [f"Folds: {cv['n_folds']}, held-out sessions: {cv['n_sessions']}, readout: {cv.get('readout')}, "
             f"unparsed answers: {cv['unparsed']}.", "", "Per item:", "", head.format("item")]
    for item in items:
        lines += _rows("model", cv["items"]["mean"], cv["items"]["std"], [item])
        for name in names:
            lines += _rows(name, cv.get("baselines_items", {}).get(name, {}), None, [item])
    lines += ["", "Per dimension (model and baselines: mean ± std over folds):", "", head.format("dimension")]
    for dim in dims:
        lines += _rows("model", cv["mean"], cv["std"], [dim])
        for name in names:
            lines += _rows(name, cv["baselines"][name], cv.get("baselines_std", {}).get(name), [dim])
    lines += _intervals(cv) + _rationales(cv)
    return "\n".join(lines)


def _intervals(cv: dict) -> list[str]:
    """Honest coverage and mean width of the calibrated intervals, per dimension, level and method."""
    iv = cv.get("intervals")
    if not iv:
        return []
    lines = ["", f"Calibrated intervals (kept: {iv['method']}; each fold calibrated on the other folds, "
             f"{iv['n_sessions']} sessions):", "", "| dimension | method | level | coverage | mean width |",
             "|---|---|---|---|---|"]
    for method, table in iv["check"].items():
        for kind in ("dimensions", "items"):
            for name, cells in table[kind].items():
                if kind == "items" and method != iv["method"]:
                    continue
                for level, c in cells.items():
                    label = name if kind == "dimensions" else f"item {name}"
                    lines.append(f"| {label} | {method} | {level}% | {100 * c['coverage']:.1f}% | {c['width']:.3f} |")
    return lines


def _rationales(cv: dict) -> list[str]:
    """BLEU, ROUGE-L and grounding of the rationale sample with and without grounded quotes."""
    rq = cv.get("rationale_quality")
    if not rq or "constrained" not in rq:
        return []
    lines = ["", f"Rationales ({rq['n_pairs']} held-out pairs; time ratio constrained/unconstrained "
             f"{rq['time_ratio']}):", "", "| decoding | BLEU | ROUGE-L F | quotes | grounded | grounding rate | seconds |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("constrained", "unconstrained"):
        m = rq[mode]
        if m is None:
            lines.append(f"| {mode} | not run: {rq.get('constrained_skipped', '')} |")
            continue
        lines.append(f"| {mode} | {m['bleu']} | {m['rouge_l_f']} | {m['n_quotes']} | {m['n_quotes_grounded']} | "
                     f"{m['grounding_rate']} | {m['seconds']} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cv", type=Path)
    ap.add_argument("--instrument", default=None, help="item order (default: as in the file)")
    args = ap.parse_args(argv)
    cv = json.loads(args.cv.read_text("utf-8"))
    items = list(cv["items"]["mean"])
    dims = list(cv["mean"])
    if args.instrument:
        from care.data.instrument import load_instrument

        inst = load_instrument(args.instrument)
        items, dims = list(inst.item_ids), list(inst.dimensions)
    print(tables(cv, items, dims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
