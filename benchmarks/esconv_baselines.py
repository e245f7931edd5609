"""Cheap baselines on ESConv (no model training): train_mean, helper proxy, TF-IDF + ridge.

    care import esconv ../shared/data/esconv/train.json ../shared/data/esconv/valid.json \
        ../shared/data/esconv/FailedESConv.part-a.json --out data-esconv
    python benchmarks/esconv_baselines.py [data-esconv/sessions.jsonl] [--folds 5] [--seed 123]

Client-grouped, score-stratified folds (care.data.folds.make_folds, as in the CV run); every baseline is fitted
on the training folds and scored on the held-out fold with care.evaluation.metrics.evaluate; the table gives the mean
(and sample std) over folds, per dimension and per item, and n = pairs over all folds. The helper proxy is
the supporter's own 0-5 item (helper_ratings.supporter_detail), mapped to the task dimension (its item is
called "relevance" in the corpus; also shown mapped to bond): only its correlations mean something, its
MSE is on the wrong scale. Prints markdown; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from care.evaluation.baselines import client_items, helper_proxy_predictions, train_mean_predictions  # noqa: E402
from care.data.folds import make_folds, split  # noqa: E402
from care.data.instrument import load_instrument  # noqa: E402
from care.evaluation.metrics import aggregate, evaluate  # noqa: E402
from care.evaluation.text_baseline import tfidf_predictions  # noqa: E402
from care.data.validation import load_valid_sessions  # noqa: E402


def _fmt(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default="data-esconv/sessions.jsonl")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args(argv)
    if not Path(args.path).is_file():
        sys.exit(f"{args.path}: not found; run `care import esconv ../shared/data/esconv/train.json "
                 "../shared/data/esconv/valid.json ../shared/data/esconv/FailedESConv.part-a.json --out data-esconv`")

    inst = load_instrument("esconv-seeker")
    sessions = load_valid_sessions(args.path, instrument=inst)
    by_id = {s.session_id: s for s in sessions}
    folds = make_folds(sessions, inst, args.folds, args.seed)
    t0 = time.time()
    results: dict[str, list[dict]] = {"train_mean": [], "helper_proxy (task)": [], "helper_proxy (bond)": [],
                                      "tfidf_ridge": []}
    for k in range(len(folds)):
        train_ids, test_ids = split(folds, k)
        train = [by_id[i] for i in train_ids]
        test = [by_id[i] for i in test_ids]
        true = client_items(test)
        results["train_mean"].append(evaluate(train_mean_predictions(train, test, inst), true, inst))
        for dim in ("task", "bond"):
            pred = helper_proxy_predictions(test, inst, {"supporter_detail": dim})
            results[f"helper_proxy ({dim})"].append(evaluate(pred, true, inst))
        results["tfidf_ridge"].append(evaluate(tfidf_predictions(train, test, inst), true, inst))
    elapsed = time.time() - t0

    n_helper = sum(1 for s in sessions if s.helper_ratings)
    print(f"ESConv seeker ratings: {len(sessions)} sessions ({n_helper} with the supporter item), "
          f"{len(folds)} client-grouped folds (seed {args.seed}); mean ± std over folds; n = pairs over all folds. "
          f"Baselines took {elapsed:.1f}s.\n")
    print("| baseline | target | pearson | spearman | mse | n |")
    print("|---|---|---|---|---|---|")
    for name, per_fold in results.items():
        for key, label in (("dimensions", "dim"), ("items", "item")):
            agg = aggregate(per_fold, key=key)
            for target in (inst.dimensions if key == "dimensions" else inst.item_ids):
                m, s = agg["mean"].get(target, {}), agg["std"].get(target, {})
                if not agg["n"].get(target):
                    continue
                cells = [_fmt(m.get(x), s.get(x)) for x in ("pearson", "spearman", "mse")]
                print(f"| {name} | {label} {target} | " + " | ".join(cells) + f" | {agg['n'][target]} |")


if __name__ == "__main__":
    main()
