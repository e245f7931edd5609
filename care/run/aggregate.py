"""The run's results: the cross-validation detail, the one-glance summary, and the held-out predictions.

- `cv_detail` (metrics/cv_detail.json): every per-fold, per-item, per-readout and per-baseline number,
  digit mass, rationale quality (with and without grounded quotes), the calibrated intervals (honest
  coverage and width, and the release's calibration) and example counts; what `scripts/cv_table.py`, the
  model card and the registry read;
- `check_gate` (metrics/gate.json): the gate's verdict on it (care.evaluation.gate);
- `cv_summary` (metrics/cv.json, the DVC metrics file): per dimension the model's mean Pearson and MSE and
  the best baseline on each, plus the gate verdict and the warnings count: about 20 values that
  `dvc metrics show` prints in one table and `dvc metrics diff` compares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from care.params import CvParams, EvalParams, GateParams, TrainParams
from care.run.data import DataRef, load_data
from care.run.documents import CvDetail, FoldMetrics, FoldScores, FoldsPlan, Gate
from care.run.fold_eval import READOUTS

if TYPE_CHECKING:
    from care.data.instrument import Instrument
    from care.data.schema import Session

    Loaded = tuple[list[Session], Instrument]  # what `care.run.data.load_data` returns


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _targets(requested: str, examples: dict) -> dict[str, Any]:
    """The targets actually trained: `rationale`, `score_only`, or `mixed` when some sessions had no rationales."""
    share = examples["score_only_fallback_sessions"] / examples["sessions"] if examples["sessions"] else 0.0
    if requested == "score_only" or share == 1.0:
        effective = "score_only"
    else:
        effective = "rationale" if share == 0.0 else "mixed"
    return {"targets": effective, "targets_requested": requested, "score_only_fallback_share": share}


def _transcripts(fold_results: list[FoldMetrics]) -> dict[str, Any]:
    sessions = sum(r.transcripts.sessions for r in fold_results)
    truncated = sum(r.transcripts.truncated for r in fold_results)
    tokens = [(r.transcripts.mean_tokens, r.transcripts.sessions) for r in fold_results
              if r.transcripts.mean_tokens is not None]
    mean_tokens = sum(t * n for t, n in tokens) / sum(n for _, n in tokens) if tokens else None
    return {"sessions": sessions, "truncated": truncated, "truncated_share": truncated / sessions if sessions else 0.0,
            "mean_tokens": mean_tokens}


def _rationale_summary(folds: list[dict]) -> dict[str, Any] | None:
    """The folds' rationale quality pooled per mode (constrained / unconstrained), and the time ratio."""
    from care.evaluation.rationale_quality import summarize

    if not folds:
        return None
    out: dict[str, Any] = {"n_pairs": sum(f["n_pairs"] for f in folds), "grounded_quotes": folds[0]["grounded_quotes"]}
    for mode in ("constrained", "unconstrained"):
        runs = [f[mode] for f in folds if f.get(mode)]
        out[mode] = {**summarize(runs), "seconds": sum(r["seconds"] for r in runs)} if runs else None
    skipped = [f["constrained_skipped"] for f in folds if f.get("constrained_skipped")]
    if skipped:
        out["constrained_skipped"] = skipped[0]  # why (eval.grounded_quotes false, and the tokenizer or marks refuse)
    both = out["constrained"] and out["unconstrained"] and out["unconstrained"]["seconds"]
    out["time_ratio"] = out["constrained"]["seconds"] / out["unconstrained"]["seconds"] if both else None
    return out


def intervals(data: DataRef, scored: list[FoldScores], eval: EvalParams, loaded: Loaded | None = None) -> dict[str, Any]:
    """Conformal intervals from the folds' out-of-fold expected scores (care.evaluation.intervals)."""
    from care.evaluation.baselines import client_items
    from care.evaluation.intervals import calibrate

    sessions, instrument = loaded or load_data(data)
    folds = [{"predictions": s.predictions["expected"], "spread": s.spread}
             for s in sorted(scored, key=lambda s: s.fold)]
    return calibrate(folds, client_items(sessions), instrument, eval.interval_levels)


def cv_detail(data: DataRef, fold_results: list[FoldMetrics], scored: list[FoldScores], eval: EvalParams,
              cv: CvParams, train: TrainParams, loaded: Loaded | None = None) -> CvDetail:
    """Mean +/- std over folds for the model and every baseline, and the run's diagnostics and warnings.
    `loaded`: `load_data(data)` when the caller has it (the data is then not read again)."""
    from care.evaluation.diagnostics import prediction_spread, warnings_for
    from care.evaluation.metrics import aggregate, cv_document, rounded

    fold_results = sorted(fold_results, key=lambda r: r.fold)
    loaded = loaded or load_data(data)
    instrument = loaded[1]
    pooled: dict[str, dict] = {}
    for fold_scores in scored:
        pooled.update(fold_scores.predictions[eval.readout])
    examples = {key: sum(r.examples[key] for r in fold_results) for key in fold_results[0].examples}
    transcripts = _transcripts(fold_results)
    rq = [r.rationale_quality for r in fold_results if r.rationale_quality]
    extra = {
        "readout": eval.readout,
        "readouts": {m: aggregate([r.readouts[m] for r in fold_results]) for m in READOUTS},
        "unparsed_by_readout": {m: sum(r.unparsed_by_readout[m] for r in fold_results) for m in READOUTS},
        "digit_mass": {"mean": _mean([r.digit_mass.mean for r in fold_results]),
                       "min": min(r.digit_mass.min for r in fold_results)},
        "rationale_quality": _rationale_summary(rq),
        "intervals": intervals(data, scored, eval, loaded),
        "examples": examples,
        "transcripts": transcripts,
        "train_seconds": sum(r.train["wall_s"] for r in fold_results),
        "seed": {"cv": cv.seed, "train": train.seed},
    }
    targets = _targets(train.targets, examples)
    extra.update({k: v for k, v in targets.items() if k != "targets"})
    doc = cv_document([r.model for r in fold_results], [r.baselines for r in fold_results],
                      sum(r.unparsed for r in fold_results), targets["targets"], rounded(extra))
    spread = prediction_spread(pooled, instrument)
    warnings = [w.as_json() for r in fold_results for w in r.warnings] + warnings_for(
        "cv", dimensions=doc["mean"], train_mean=doc["baselines"].get("train_mean"),
        digit_mass=doc["digit_mass"]["mean"], spread=spread, truncated=transcripts["truncated"],
        sessions=transcripts["sessions"], thresholds=eval.warnings)
    doc["prediction_sd"] = rounded(spread)
    doc["warnings"] = warnings
    return CvDetail.model_validate(doc)


def check_gate(detail: CvDetail, gate: GateParams) -> Gate:
    """The gate's verdict on the cross-validated means (care.evaluation.gate)."""
    from care.evaluation.gate import evaluate_gate

    return Gate.model_validate(evaluate_gate(detail.as_json(), gate))


def _best(baselines: dict, dim: str, metric: str) -> tuple[str | None, float | None]:
    values = [(name, (b.get(dim) or {}).get(metric)) for name, b in baselines.items()]
    values = [(name, v) for name, v in values if v is not None]
    if not values:
        return None, None
    pick = max if metric == "pearson" else min
    return pick(values, key=lambda nv: nv[1])


def cv_summary(detail: CvDetail, gate: Gate) -> dict:
    """`metrics/cv.json`: per dimension the model's Pearson and MSE and the best baseline on each (`best_r`,
    `best_r_by`, `best_mse`, `best_mse_by`), then the gate verdict and the count of overall warnings. Short
    keys: `dvc metrics show` prints them as one row of about 20 columns."""
    baselines = detail.baselines
    summary: dict[str, Any] = {}
    for dim, m in detail.mean.items():
        best_r_by, best_r = _best(baselines, dim, "pearson")
        best_mse_by, best_mse = _best(baselines, dim, "mse")
        summary[dim] = {"pearson": m["pearson"], "mse": m["mse"], "best_r": best_r, "best_r_by": best_r_by,
                        "best_mse": best_mse, "best_mse_by": best_mse_by}
    summary["gate_passed"] = gate.passed
    summary["gate_failed"] = len(gate.failed)
    summary["gate_not_applied"] = len(gate.not_applied)
    summary["warnings"] = sum(1 for w in detail.warnings if w.scope == "cv")
    return summary


def prediction_rows(data: DataRef, folds: FoldsPlan, scored: list[FoldScores], readout: str,
                    loaded: Loaded | None = None) -> list[dict]:
    """`metrics/predictions.jsonl` rows: ids, fold, predicted and client-rated scores (numbers only)."""
    from care.evaluation.baselines import client_items
    from care.evaluation.plots import predictions_rows

    sessions, instrument = loaded or load_data(data)
    pred: dict[str, dict] = {}
    for fold_scores in scored:
        pred.update(fold_scores.predictions[readout])
    return predictions_rows(pred, client_items(sessions), instrument, folds.session_ids())
