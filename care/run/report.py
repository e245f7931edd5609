"""The run's results: the cross-validation detail, the one-glance summary, and the held-out predictions.

- `cv_detail` (metrics/cv_detail.json): every per-fold, per-item, per-readout and per-baseline number,
  digit mass, rationale quality and example counts; what `scripts/cv_table.py`, the model card and the
  registry read.
- `cv_summary` (metrics/cv.json, the DVC metrics file): per dimension the model's mean Pearson and MSE and
  the best baseline on each, plus the gate verdict: about 20 numbers that `dvc metrics show` prints in
  one table and `dvc metrics diff` compares.
"""

from __future__ import annotations

from typing import Any

from care.params import CvParams, EvalParams, TrainParams
from care.run.data import DataRef, load_data
from care.run.fold_eval import READOUTS


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def cv_detail(fold_results: list[dict], eval: EvalParams, cv: CvParams, train: TrainParams) -> dict:
    """Mean +/- std over folds for the model and every baseline, and the run's diagnostics."""
    from care.evaluation.metrics import aggregate, cv_document, rounded

    fold_results = sorted(fold_results, key=lambda r: r["fold"])
    rq = [r["rationale_quality"] for r in fold_results if r["rationale_quality"]]
    extra = {
        "readout": eval.readout,
        "readouts": {m: aggregate([r["readouts"][m] for r in fold_results]) for m in READOUTS},
        "unparsed_by_readout": {m: sum(r["unparsed_by_readout"][m] for r in fold_results) for m in READOUTS},
        "digit_mass": {"mean": _mean([r["digit_mass"]["mean"] for r in fold_results]),
                       "min": min(r["digit_mass"]["min"] for r in fold_results)},
        "rationale_quality": (
            {key: _mean([q.get(key) for q in rq]) for key in rq[0] if isinstance(rq[0][key], (int, float))} if rq else None
        ),
        "examples": {key: sum(r["examples"][key] for r in fold_results) for key in fold_results[0]["examples"]},
        "train_seconds": sum(r["train"]["wall_s"] for r in fold_results),
        "seed": {"cv": cv.seed, "train": train.seed},
    }
    return cv_document([r["model"] for r in fold_results], [r["baselines"] for r in fold_results],
                       sum(r["unparsed"] for r in fold_results), train.targets, rounded(extra))


def _best(baselines: dict, dim: str, metric: str) -> dict[str, Any]:
    values = [(name, (b.get(dim) or {}).get(metric)) for name, b in baselines.items()]
    values = [(name, v) for name, v in values if v is not None]
    if not values:
        return {"name": None, "value": None}
    pick = max if metric == "pearson" else min
    name, value = pick(values, key=lambda nv: nv[1])
    return {"name": name, "value": value}


def cv_summary(detail: dict, gate_doc: dict) -> dict:
    """`metrics/cv.json`: per dimension the model's Pearson and MSE, the best baseline on each, the gate."""
    baselines = detail["baselines"]
    summary: dict[str, Any] = {}
    for dim, m in detail["mean"].items():
        summary[dim] = {
            "pearson": m["pearson"],
            "mse": m["mse"],
            "best_baseline_pearson": _best(baselines, dim, "pearson"),
            "best_baseline_mse": _best(baselines, dim, "mse"),
        }
    summary["gate"] = {"passed": bool(gate_doc["passed"]), "failed_checks": len(gate_doc["failed"])}
    return summary


def prediction_rows(data: DataRef, folds_doc: dict, scored: list[dict], readout: str) -> list[dict]:
    """`metrics/predictions.jsonl` rows: ids, fold, predicted and client-rated scores (numbers only)."""
    from care.evaluation.baselines import client_items
    from care.evaluation.plots import predictions_rows

    sessions, instrument = load_data(data)
    pred: dict[str, dict] = {}
    for fold_scores in scored:
        pred.update(fold_scores["predictions"][readout])
    folds = [f["sessions"] for f in folds_doc["folds"]]
    return predictions_rows(pred, client_items(sessions), instrument, folds)
