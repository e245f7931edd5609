"""Choose a fine-tuning recipe by cross-validation only: run the pipeline's own folds for each candidate.

Each candidate is a set of `--set KEY=VALUE` overrides on a params file. For each one this runs the
pipeline's own code without ZenML (validate once, the same client-grouped folds, fine-tune per fold, score
the held-out fold, the same baselines on the same folds) and prints the model's mean Pearson and MSE per
dimension next to TF-IDF's. Nothing here looks at anything but the cross-validated folds: the recipe is
chosen on them, and the default run reports the same folds (the choice is part of the method, as in any
model selection by CV; there is no separate test split to peek at). Zero-shot scoring and rationale
generation are skipped (they do not change the model). Fits and scores are cached by content, so a
candidate run twice costs nothing the second time.

    python benchmarks/recipe_sweep.py --params params.yaml --out sweep.jsonl \
        --candidate "train.lr=0.003" --candidate "train.lr=0.001 train.epochs=2"
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time


def run_candidate(params_file: str, overrides: list[str]) -> dict:
    """Cross-validate one candidate; returns the model's and the baselines' mean per dimension."""
    from care.params import load_params
    from care.run.aggregate import cv_detail
    from care.run.data import load_data, plan_folds, validate_data
    from care.run.fits import finetune_on, prepare_base
    from care.run.fold_eval import fold_metrics, score_fold

    p = load_params(params_file, [*overrides, "eval.zero_shot=false", "eval.rationale_sample=0"])
    data = validate_data(p.data)
    _, instrument = load_data(data)
    folds = plan_folds(data, p.cv)
    base = prepare_base(data, p.fit)
    started = time.perf_counter()
    results, scored = [], []
    for k in range(p.cv.folds):
        model = finetune_on(data, folds, k, p.fit, base, desc=f"fold {k + 1}/{p.cv.folds}")
        s = score_fold(data, folds, k, p.fit, p.eval, model, base, p.cv.seed)
        results.append(fold_metrics(data, folds, k, p.eval, s))
        scored.append(s)
    detail = cv_detail(data, results, scored, p.eval, p.cv, p.train)
    out = {"overrides": overrides, "base": base.key[:16], "seconds": round(time.perf_counter() - started, 1)}
    for name, block in [("model", detail.mean)] + [(b, detail.baselines[b]) for b in ("tfidf", "train_mean")]:
        out[name] = {d: {m: (None if block[d].get(m) is None else round(block[d][m], 4)) for m in ("pearson", "mse")}
                     for d in instrument.dimensions}
    out["digit_mass"] = None if detail.digit_mass.mean is None else round(detail.digit_mass.mean, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="sweep.jsonl", help="JSON lines, one per candidate (appended)")
    ap.add_argument("--candidate", action="append", default=[], help="space-separated KEY=VALUE overrides")
    args = ap.parse_args()
    for cand in args.candidate or [""]:
        result = run_candidate(args.params, shlex.split(cand))
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        dims = list(result["model"])
        cells = " | ".join(f"{d} r {result['model'][d]['pearson']} vs {result['tfidf'][d]['pearson']}, "
                           f"mse {result['model'][d]['mse']} vs {result['tfidf'][d]['mse']}" for d in dims)
        print(f"[{cand or 'params as they are'}] {result['seconds']} s: {cells}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
