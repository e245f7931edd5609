"""Calibrated intervals: split-conformal on the cross-validation's out-of-fold residuals (crepes).

For every dimension and every item, the residuals (client's own score minus predicted score) of held-out
sessions calibrate a radius per level with crepes' `ConformalRegressor`, so that for sessions like those,
the client's score falls inside [prediction - radius, prediction + radius] (clipped to the scale) with
probability of at least the level. `normalized` intervals divide each residual by the spread of the model's
own digit distribution (its standard deviation, plus `BETA`) and scale the radius back by it: wider where the
model is unsure. They are kept only when the honest check finds them narrower (by `MIN_GAIN`) than absolute ones.

- `cross_check`: the honest check; each fold's intervals come from the OTHER folds' residuals only, and
  their coverage and mean width are measured on that fold (per dimension, item, level and method).
- `calibrate`: the release's calibration from every fold's residuals (numbers only: radii, the method, the
  levels and the scale); `session_intervals` turns it into a new session's intervals (care score).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from care.data.instrument import Instrument
from care.errors import CareError

FORMAT = "care-intervals/1"
BETA = 0.05  # added to every spread: a near-certain distribution still gets an interval
METHODS = ("absolute", "normalized")
MIN_GAIN = 0.01  # normalised intervals are kept only when their mean width is at least 1% narrower
_KINDS = ("dimensions", "items")


def distribution_sd(distribution: Sequence[float], points: Sequence[int]) -> float:
    """Standard deviation of a distribution over the scale points."""
    p, x = np.asarray(distribution, float), np.asarray(points, float)
    mean = float(p @ x)
    return float(math.sqrt(max(float(p @ (x - mean) ** 2), 0.0)))


def dimension_sd(item_sds: Sequence[float]) -> float:
    """Spread of a dimension score (the mean of its items), the items taken as independent."""
    return math.sqrt(sum(s * s for s in item_sds)) / len(item_sds)


def _targets(instrument: Instrument) -> dict[str, list[str]]:
    return {"dimensions": list(instrument.dimensions), "items": list(instrument.item_ids)}


def _session_values(instrument: Instrument, items: Mapping[str, float], sds: Mapping[str, float]):
    """{kind: {name: (value, spread)}} of one session's item values and item spreads."""
    dims = instrument.dimension_scores(dict(items))
    out = {"items": {i: (float(items[i]), float(sds[i])) for i in instrument.item_ids},
           "dimensions": {}}
    for dim, ids in instrument.items_by_dimension.items():
        out["dimensions"][dim] = (float(dims[dim]), dimension_sd([sds[i] for i in ids]))
    return out


def _samples(folds: Sequence[Mapping[str, Any]], truth: Mapping[str, Mapping[str, int]],
             instrument: Instrument) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per kind and target: arrays y (client), yhat (predicted), sigma (spread), fold."""
    rows: dict[str, dict[str, list]] = {kind: {n: [] for n in names} for kind, names in _targets(instrument).items()}
    for k, fold in enumerate(folds):
        for sid, preds in fold["predictions"].items():
            if sid not in truth:
                continue
            pred = _session_values(instrument, preds, fold["spread"][sid])
            true = instrument.dimension_scores({i: float(v) for i, v in truth[sid].items()})
            for kind, targets in pred.items():
                for name, (yhat, sigma) in targets.items():
                    y = truth[sid][name] if kind == "items" else true[name]
                    rows[kind][name].append((float(y), yhat, sigma, k))
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for kind, targets in rows.items():
        out[kind] = {}
        for name, r in targets.items():
            a = np.asarray(r, float).reshape(-1, 4)
            out[kind][name] = {"y": a[:, 0], "yhat": a[:, 1], "sigma": a[:, 2], "fold": a[:, 3].astype(int)}
    return out


def radius(residuals: np.ndarray, sigmas: np.ndarray | None, level: float) -> float | None:
    """The conformal radius at `level` percent (crepes); None when too few residuals for that level
    (the interval is then the whole scale)."""
    from crepes import ConformalRegressor

    if len(residuals) == 0:
        return None
    cr = ConformalRegressor().fit(np.asarray(residuals, float), sigmas=None if sigmas is None else sigmas + BETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few residuals for the level: infinite, said as None below
        r = float(cr.predict_int(np.zeros(1), sigmas=None if sigmas is None else np.ones(1),
                                 confidence=level / 100)[0, 1])
    return r if math.isfinite(r) else None


def bounds(yhat, sigma, r: float | None, method: str, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds around predictions `yhat` (arrays or numbers), clipped to the scale."""
    yhat = np.asarray(yhat, float)
    lo_s, hi_s = scale
    if r is None:
        return np.full_like(yhat, lo_s), np.full_like(yhat, hi_s)
    half = r * (np.asarray(sigma, float) + BETA) if method == "normalized" else np.full_like(yhat, r)
    return np.clip(yhat - half, lo_s, hi_s), np.clip(yhat + half, lo_s, hi_s)


def _scale(instrument: Instrument) -> tuple[float, float]:
    return float(min(instrument.scale.points)), float(max(instrument.scale.points))


def cross_check(folds: Sequence[Mapping[str, Any]], truth: Mapping[str, Mapping[str, int]], instrument: Instrument,
                levels: Sequence[int]) -> dict[str, Any]:
    """Honest coverage and mean width per method, kind, target and level; each fold calibrated on the others.

    `folds[k]` holds the fold's out-of-fold `predictions` {session: {item: expected}} and `spread`
    {session: {item: sd of the digit distribution}}; `truth` the clients' item ratings.
    """
    samples, scale = _samples(folds, truth, instrument), _scale(instrument)
    table: dict[str, Any] = {}
    for method in METHODS:
        table[method] = {}
        for kind, targets in samples.items():
            table[method][kind] = {}
            for name, s in targets.items():
                cells = {}
                for level in levels:
                    covered, widths = [], []
                    for k in np.unique(s["fold"]):
                        cal, test = s["fold"] != k, s["fold"] == k
                        sig = s["sigma"][cal] if method == "normalized" else None
                        r = radius(s["y"][cal] - s["yhat"][cal], sig, level)
                        lo, hi = bounds(s["yhat"][test], s["sigma"][test], r, method, scale)
                        covered.append((s["y"][test] >= lo - 1e-9) & (s["y"][test] <= hi + 1e-9))
                        widths.append(hi - lo)
                    c, w = np.concatenate(covered), np.concatenate(widths)
                    cells[str(level)] = {"coverage": float(c.mean()) if c.size else None,
                                         "width": float(w.mean()) if w.size else None, "n": int(c.size)}
                table[method][kind][name] = cells
    return table


def _up(r: float | None) -> float | None:
    """Rounded up to 4 decimals: the metrics files round numbers, which must never narrow an interval."""
    return None if r is None else math.ceil(r * 1e4) / 1e4


def _mean_width(cells: Mapping[str, Any]) -> float:
    widths = [c["width"] for kind in _KINDS for target in cells[kind].values() for c in target.values()
              if c["width"] is not None]
    return sum(widths) / len(widths) if widths else math.inf


def calibrate(folds: Sequence[Mapping[str, Any]], truth: Mapping[str, Mapping[str, int]], instrument: Instrument,
              levels: Sequence[int]) -> dict[str, Any]:
    """The honest check, the method it picks (normalized only if that is narrower), and the release's
    calibration from all folds' residuals. Numbers only."""
    levels = sorted({int(x) for x in levels})
    if not levels or any(not 0 < x < 100 for x in levels):
        raise CareError(f"interval levels must be percentages between 0 and 100 (got {levels})")
    check = cross_check(folds, truth, instrument, levels)
    narrower = _mean_width(check["normalized"]) < (1 - MIN_GAIN) * _mean_width(check["absolute"])
    method = "normalized" if narrower else "absolute"
    samples = _samples(folds, truth, instrument)
    radii: dict[str, dict[str, dict[str, float | None]]] = {}
    for kind, targets in samples.items():
        radii[kind] = {}
        for name, s in targets.items():
            sig = s["sigma"] if method == "normalized" else None
            radii[kind][name] = {str(level): _up(radius(s["y"] - s["yhat"], sig, level)) for level in levels}
    n = len(next(iter(samples["items"].values()))["y"]) if samples["items"] else 0
    calibration = {"format": FORMAT, "method": method, "levels": levels, "beta": BETA, "scale": list(_scale(instrument)),
                   "n_sessions": n, "radius": radii}
    return {"levels": levels, "method": method, "n_sessions": n, "check": check, "calibration": calibration}


def summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a model card and a registry record need of `calibrate`'s result: the kept method's honest
    coverage and width per dimension and item, and both methods' mean widths."""
    check = doc["check"]
    return {"method": doc["method"], "levels": doc["levels"], "n_sessions": doc["n_sessions"],
            "dimensions": check[doc["method"]]["dimensions"], "items": check[doc["method"]]["items"],
            "mean_width": {m: w if math.isfinite(w := _mean_width(check[m])) else None for m in METHODS}}


def check_calibration(calibration: Any, instrument: Instrument, where: str) -> dict[str, Any]:
    """Refuse a calibration that does not fit the instrument (names the file and the field)."""
    if not isinstance(calibration, dict) or calibration.get("format") != FORMAT:
        raise CareError(f"{where}: not a {FORMAT} calibration")
    if calibration.get("method") not in METHODS:
        raise CareError(f"{where}: method: expected one of {', '.join(METHODS)}")
    radii = calibration.get("radius") or {}
    for kind, names in _targets(instrument).items():
        missing = [n for n in names if n not in (radii.get(kind) or {})]
        if missing:
            raise CareError(f"{where}: radius.{kind} lacks {', '.join(missing[:5])}")
        for name in names:
            for level in calibration.get("levels") or []:
                r = radii[kind][name].get(str(level), "missing")
                if r is not None and not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
                    raise CareError(f"{where}: radius.{kind}.{name}.{level}: expected a non-negative number or null")
    return calibration


def session_intervals(calibration: Mapping[str, Any], instrument: Instrument, expected: Mapping[str, float],
                      distributions: Mapping[str, Sequence[float]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """One session's intervals: {"dimensions"|"items": {name: {level: [lo, hi]}}}, clipped to the scale."""
    sds = {i: distribution_sd(distributions[i], instrument.scale.points) for i in instrument.item_ids}
    values = _session_values(instrument, expected, sds)
    scale = tuple(calibration["scale"])
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for kind, targets in values.items():
        out[kind] = {}
        for name, (yhat, sigma) in targets.items():
            cells = {}
            for level in calibration["levels"]:
                lo, hi = bounds(yhat, sigma, calibration["radius"][kind][name][str(level)], calibration["method"], scale)
                cells[str(level)] = [float(lo), float(hi)]
            out[kind][name] = cells
    return out
