"""Saying when a run learned nothing: checks on each fold and on the aggregate, with thresholds from params.

A warning is a dict of numbers and names only: {"scope", "check", "dimension", "value", "threshold",
"message"}. The checks:
- `digit_mass`: the mean probability on the scale digits at the answer position is below the threshold
  (the model does not answer in the trained format, so its expected scores mean little);
- `prediction_sd`: the predicted dimension scores hardly vary over the held-out sessions (near-constant);
- `pearson`: the model's Pearson r is not above zero (or undefined);
- `mse_vs_train_mean`: the model's MSE is not below always predicting the training mean;
- `truncated_share`: more transcripts than the threshold were cut to fit the context.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from care.params import WarningParams


def prediction_spread(pred_items: Mapping[str, Mapping[str, float | None]], instrument) -> dict[str, float | None]:
    """Per dimension, the sample std of the predicted dimension scores over sessions (None under 2 sessions)."""
    per_session = [instrument.dimension_scores(p) for p in pred_items.values()]
    out: dict[str, float | None] = {}
    for dim in instrument.dimensions:
        values = [d[dim] for d in per_session if d[dim] is not None]
        out[dim] = statistics.stdev(values) if len(values) >= 2 else None
    return out


def _warning(scope: str, check: str, dim: str | None, value, threshold, message: str) -> dict:
    r = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
    return {"scope": scope, "check": check, "dimension": dim, "value": r(value), "threshold": r(threshold),
            "message": message}


def warnings_for(scope: str, *, dimensions: Mapping[str, Mapping], train_mean: Mapping[str, Mapping] | None,
                 digit_mass: float | None, spread: Mapping[str, float | None], truncated: int, sessions: int,
                 thresholds: WarningParams) -> list[dict]:
    """Every check of the module docstring on one fold (`scope` "fold k") or the aggregate ("cv")."""
    out = []
    if digit_mass is not None and digit_mass < thresholds.min_digit_mass:
        out.append(_warning(scope, "digit_mass", None, digit_mass, thresholds.min_digit_mass,
                            "the model puts little probability on the scale digits: its scores mean little"))
    for dim, m in dimensions.items():
        sd = spread.get(dim)
        if sd is not None and sd < thresholds.min_prediction_sd:
            out.append(_warning(scope, "prediction_sd", dim, sd, thresholds.min_prediction_sd,
                                f"{dim}: predictions are nearly constant across sessions"))
        r = m.get("pearson")
        if r is None or r <= 0:
            out.append(_warning(scope, "pearson", dim, r, 0.0,
                                f"{dim}: Pearson r is {'undefined' if r is None else 'not above zero'}"))
        base = (train_mean or {}).get(dim, {}).get("mse")
        mse = m.get("mse")
        if base is not None and (mse is None or mse >= base):
            out.append(_warning(scope, "mse_vs_train_mean", dim, mse, base,
                                f"{dim}: MSE is not below always predicting the training mean"))
    share = truncated / sessions if sessions else 0.0
    if share > thresholds.max_truncated_share:
        out.append(_warning(scope, "truncated_share", None, share, thresholds.max_truncated_share,
                            f"{truncated} of {sessions} transcripts were cut to fit the context (model.max_length)"))
    return out
