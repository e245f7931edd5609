"""Agreement between predicted and client-rated scores: Pearson r, Spearman rho, MSE, per item and dimension.

Conventions (they shape every metrics file):
- A correlation that is undefined (fewer than 2 pairs, or a constant side) is ``None`` with a ``note``;
  never NaN, so the JSON stays valid and a gate never compares against NaN.
- A dimension's score is the mean of its items. A session whose prediction for an item is missing (the
  model's answer did not parse, or a baseline has no value) is left out of that item and of the item's
  dimension, and counted in ``n_missing`` (item answers) / ``n_sessions_incomplete`` (sessions).
- Mean and std over folds: a fold's undefined value is skipped; std is the sample std (ddof=1) over the
  folds that have a value, ``None`` when fewer than 2 do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from care.data.instrument import Instrument

METRICS = ("pearson", "spearman", "mse")
DECIMALS = 4


def _present(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def score_metrics(pred: Sequence[float], true: Sequence[float]) -> dict:
    """``{"pearson", "spearman", "mse", "n"}`` (+ ``"note"`` when a value is undefined) for paired scores."""
    from scipy import stats

    if len(pred) != len(true):
        raise ValueError(f"score_metrics: {len(pred)} predictions for {len(true)} ratings")
    p = np.asarray(pred, dtype=float)
    t = np.asarray(true, dtype=float)
    n = int(p.size)
    out: dict = {"pearson": None, "spearman": None, "mse": None, "n": n}
    if n == 0:
        out["note"] = "no pairs: all metrics undefined"
        return out
    out["mse"] = float(np.mean((p - t) ** 2))
    if n < 2:
        out["note"] = "fewer than 2 pairs: correlations undefined"
    elif np.ptp(p) == 0 and np.ptp(t) == 0:
        out["note"] = "constant predictions and constant ratings: correlations undefined"
    elif np.ptp(p) == 0:
        out["note"] = "constant predictions: correlations undefined"
    elif np.ptp(t) == 0:
        out["note"] = "constant ratings: correlations undefined"
    else:
        r = float(stats.pearsonr(p, t)[0])
        rho = float(stats.spearmanr(p, t)[0])
        out["pearson"] = r if math.isfinite(r) else None
        out["spearman"] = rho if math.isfinite(rho) else None
        if out["pearson"] is None or out["spearman"] is None:
            out["note"] = "correlation undefined (numerical)"
    return out


def evaluate(
    pred_items: Mapping[str, Mapping[str, float | None]],
    true_items: Mapping[str, Mapping[str, int]],
    instrument: Instrument,
) -> dict:
    """Metrics per dimension and per item over the sessions of ``true_items`` (the held-out set).

    ``pred_items[sid][item]`` may be missing or ``None`` (unparsed / no baseline value); such pairs are
    excluded and counted. Returns::

        {"dimensions": {dim: metrics}, "items": {item: metrics},
         "n_sessions": sessions rated, "n_missing": missing item predictions,
         "n_sessions_incomplete": sessions with at least one missing item prediction}
    """
    sids = sorted(true_items)
    items_out: dict = {}
    n_missing = 0
    incomplete: set[str] = set()
    for item in instrument.item_ids:
        p, t = [], []
        for sid in sids:
            value = pred_items.get(sid, {}).get(item)
            if _present(value):
                p.append(float(value))
                t.append(float(true_items[sid][item]))
            else:
                n_missing += 1
                incomplete.add(sid)
        items_out[item] = score_metrics(p, t)
    pairs: dict[str, tuple[list[float], list[float]]] = {dim: ([], []) for dim in instrument.dimensions}
    for sid in sids:
        raw = pred_items.get(sid, {})
        pred = instrument.dimension_scores({i: float(raw[i]) if _present(raw.get(i)) else None
                                            for i in instrument.item_ids})
        true = instrument.dimension_scores({i: float(v) for i, v in true_items[sid].items()})
        for dim, (p, t) in pairs.items():
            if pred[dim] is not None:
                p.append(pred[dim])
                t.append(true[dim])
    dims_out = {dim: score_metrics(p, t) for dim, (p, t) in pairs.items()}
    return {
        "dimensions": dims_out,
        "items": items_out,
        "n_sessions": len(sids),
        "n_missing": n_missing,
        "n_sessions_incomplete": len(incomplete),
    }


def aggregate(fold_results: Sequence[Mapping], key: str = "dimensions") -> dict:
    """Mean and std over folds of each metric, for every dimension (or item, with ``key="items"``).

    ``fold_results`` are ``evaluate`` results. Returns::

        {"mean": {name: {"pearson", "spearman", "mse"}}, "std": {same}, "n": {name: pairs over all folds},
         "n_folds": {name: {metric: folds with a defined value}}}
    """
    names: list[str] = []
    for res in fold_results:
        for name in res.get(key, {}):
            if name not in names:
                names.append(name)
    mean: dict = {}
    std: dict = {}
    n: dict = {}
    n_folds: dict = {}
    for name in names:
        mean[name], std[name], n_folds[name] = {}, {}, {}
        n[name] = sum(int(res.get(key, {}).get(name, {}).get("n", 0)) for res in fold_results)
        for metric in METRICS:
            values = [res[key][name].get(metric) for res in fold_results if name in res.get(key, {})]
            values = [float(v) for v in values if _present(v)]
            n_folds[name][metric] = len(values)
            mean[name][metric] = float(np.mean(values)) if values else None
            std[name][metric] = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return {"mean": mean, "std": std, "n": n, "n_folds": n_folds}


def rounded(obj, decimals: int = DECIMALS):
    """A copy of a JSON-like tree with floats rounded (NaN/inf become None)."""
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, float):
        return round(obj, decimals) if math.isfinite(obj) else None
    if isinstance(obj, (np.floating,)):
        return rounded(float(obj), decimals)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, Mapping):
        return {k: rounded(v, decimals) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, decimals) for v in obj]
    return obj


def _dims_only(result: Mapping) -> dict:
    return {
        "dimensions": result["dimensions"],
        "n_sessions": result["n_sessions"],
        "n_missing": result["n_missing"],
        "n_sessions_incomplete": result.get("n_sessions_incomplete", 0),
    }


def cv_document(
    folds: Sequence[Mapping],
    baselines_per_fold: Sequence[Mapping[str, Mapping]],
    unparsed: int,
    targets: str,
    extra: Mapping | None = None,
) -> dict:
    """``metrics/cv_detail.json`` from per-fold ``evaluate`` results of the model and of each baseline.

    ``folds[k]`` is the model's ``evaluate`` result on fold k; ``baselines_per_fold[k]`` maps a baseline
    name (``counselor``, ``train_mean``, ``tfidf``, ``helper_proxy``, ``zero_shot``) to its ``evaluate`` result on the
    same held-out sessions. ``extra`` (numbers/ids only, e.g. ``{"readout": "expected", "seed": 123}``)
    is merged at the top level. Numbers are rounded to 4 decimals; undefined values are null.
    """
    if len(baselines_per_fold) != len(folds):
        raise ValueError(f"cv_document: {len(folds)} folds but {len(baselines_per_fold)} baseline entries")
    per_fold = []
    for k, (res, base) in enumerate(zip(folds, baselines_per_fold)):
        entry = {
            "fold": k,
            "n_sessions": res["n_sessions"],
            "n_missing": res["n_missing"],
            "n_sessions_incomplete": res.get("n_sessions_incomplete", 0),
            "dimensions": res["dimensions"],
            "items": res["items"],
            "baselines": {name: _dims_only(b) for name, b in base.items()},
        }
        per_fold.append(entry)
    model = aggregate(folds)
    items = aggregate(folds, key="items")
    names: list[str] = []
    for base in baselines_per_fold:
        names.extend(n for n in base if n not in names)
    baselines, baselines_std, baselines_n, baselines_items = {}, {}, {}, {}
    for name in names:
        results = [base[name] for base in baselines_per_fold if name in base]
        agg = aggregate(results)
        baselines[name], baselines_std[name], baselines_n[name] = agg["mean"], agg["std"], agg["n"]
        baselines_items[name] = aggregate(results, key="items")["mean"]
    doc = {
        "n_folds": len(folds),
        "n_sessions": sum(int(r["n_sessions"]) for r in folds),
        "mean": model["mean"],
        "std": model["std"],
        "n": model["n"],
        "baselines": baselines,
        "baselines_std": baselines_std,
        "baselines_n": baselines_n,
        "baselines_items": baselines_items,
        "items": {"mean": items["mean"], "std": items["std"]},
        "unparsed": int(unparsed),
        "targets": targets,
        "folds": per_fold,
    }
    for k, v in (extra or {}).items():
        if k in doc:
            raise ValueError(f"cv_document: extra key {k!r} would overwrite a computed field")
        doc[k] = v
    return rounded(doc)
