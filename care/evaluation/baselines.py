"""Baseline predictions on the held-out sessions, in the shape ``evaluate`` takes: ``{sid: {item: float}}``.

- ``counselor``: the counselor's own ratings of the same items, only for sessions that have them (the
  others are absent, so ``evaluate`` excludes and counts them; its ``n`` says how many were scored).
- ``train_mean``: every held-out session gets the training folds' per-item mean client rating. Constant
  predictions: its correlations are undefined (None), only its MSE means something.
- ``helper_proxy``: a helper-side item that is not the instrument (e.g. ESConv's supporter item), mapped
  to a dimension, or a list of them, with ``{helper_item: dimension | [dimensions]}``. Every item of a mapped dimension is predicted as the
  helper's value (the mean of the helper items mapped to it), so the dimension's prediction is that value;
  items of unmapped dimensions are absent. The value stays on the helper's own scale: its correlations
  are what matters, its MSE only when the scales agree.
- ``tfidf``: TF-IDF + ridge fitted on the training sessions' transcripts (``care.evaluation.text_baseline``).
- ``zero_shot`` comes from model scoring and is passed to ``evaluate`` like any prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from care.errors import CareError, UsageError
from care.data.instrument import Instrument
from care.evaluation.metrics import evaluate
from care.data.schema import Session


def client_items(sessions: Iterable[Session]) -> dict[str, dict[str, int]]:
    """The labels: ``{sid: client_ratings}`` (sessions without client ratings are left out)."""
    return {s.session_id: dict(s.client_ratings) for s in sessions if s.client_ratings}


def counselor_predictions(sessions: Iterable[Session]) -> dict[str, dict[str, float]]:
    return {
        s.session_id: {k: float(v) for k, v in s.counselor_ratings.items()}
        for s in sessions
        if s.counselor_ratings
    }


def train_mean_predictions(
    train: Iterable[Session], held_out: Iterable[Session], instrument: Instrument
) -> dict[str, dict[str, float]]:
    sums = {i: 0.0 for i in instrument.item_ids}
    counts = {i: 0 for i in instrument.item_ids}
    for s in train:
        for i in instrument.item_ids:
            if s.client_ratings and i in s.client_ratings:
                sums[i] += s.client_ratings[i]
                counts[i] += 1
    empty = [i for i in instrument.item_ids if counts[i] == 0]
    if empty:
        raise CareError(f"train_mean baseline: no training ratings for item(s) {', '.join(empty)}")
    means = {i: sums[i] / counts[i] for i in instrument.item_ids}
    return {s.session_id: dict(means) for s in held_out}


def _dimensions(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else list(target)


def check_helper_map(mapping: Mapping[str, str | Sequence[str]], instrument: Instrument) -> None:
    """Refuse (usage error) an `eval.helper_proxy` mapping onto dimensions the instrument does not have."""
    unknown = sorted({d for t in mapping.values() for d in _dimensions(t) if d not in instrument.dimensions})
    if unknown:
        raise UsageError(
            f"eval.helper_proxy: dimension(s) {', '.join(unknown)} not in instrument {instrument.name} "
            f"(dimensions: {', '.join(instrument.dimensions)})"
        )


def computed_baselines(helper_map: Mapping | None, text: bool, zero_shot: bool) -> list[str]:
    """The baselines a run computes on every fold: what a gate may compare against."""
    return ["counselor", "train_mean"] + (["helper_proxy"] if helper_map else []) + (["tfidf"] if text else []) \
        + (["zero_shot"] if zero_shot else [])


def helper_proxy_predictions(
    sessions: Iterable[Session], instrument: Instrument, mapping: Mapping[str, str | Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Predict each mapped dimension's items from ``helper_ratings[helper_item]`` (see module doc)."""
    check_helper_map(mapping, instrument)
    out: dict[str, dict[str, float]] = {}
    for s in sessions:
        if not s.helper_ratings:
            continue
        pred: dict[str, float] = {}
        for dim in instrument.dimensions:
            values = [s.helper_ratings[h] for h, t in mapping.items() if dim in _dimensions(t) and h in s.helper_ratings]
            if values:
                value = sum(values) / len(values)
                for item in instrument.items_by_dimension[dim]:
                    pred[item] = float(value)
        if pred:
            out[s.session_id] = pred
    return out


def baseline_results(
    train: Iterable[Session],
    held_out: Iterable[Session],
    instrument: Instrument,
    helper_map: Mapping[str, str | Sequence[str]] | None = None,
    text: bool = False,
) -> dict[str, dict]:
    """``{name: evaluate(...)}`` for ``counselor``, ``train_mean``, (when ``helper_map``) ``helper_proxy``
    and (when ``text``) ``tfidf``.

    The ``counselor`` entry is always present; with no counselor ratings its metrics are null (n = 0).
    """
    train = list(train)
    held_out = list(held_out)
    true = client_items(held_out)
    out = {
        "counselor": evaluate(counselor_predictions(held_out), true, instrument),
        "train_mean": evaluate(train_mean_predictions(train, held_out, instrument), true, instrument),
    }
    if helper_map:
        out["helper_proxy"] = evaluate(helper_proxy_predictions(held_out, instrument, helper_map), true, instrument)
    if text:
        from care.evaluation.text_baseline import tfidf_predictions

        out["tfidf"] = evaluate(tfidf_predictions(train, held_out, instrument), true, instrument)
    return out
