"""Held-out predictions as rows (`care.run.outputs` writes them to ``metrics/predictions.jsonl``) and
predicted-vs-client-rated plots.

Everything written here is numbers and ids: no transcript or rationale text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from care.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json
from care.data.instrument import Instrument

PNG_NAME = "predicted_vs_actual.png"
DIMENSIONS = "dimensions"


def _num(v) -> float | None:
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def predictions_rows(
    pred_items: Mapping[str, Mapping[str, float | None]],
    true_items: Mapping[str, Mapping[str, int]],
    instrument: Instrument,
    folds: Sequence[Sequence[str]],
    decimals: int = 4,
) -> list[dict]:
    """One row per held-out session, in fold order then session id::

        {"session_id", "fold", "items": {"pred": {item: float|None}, "true": {item: int}},
         "dimensions": {"pred": {dim: float|None}, "true": {dim: float}}}

    A dimension's prediction is the mean of its items, ``None`` when any of them is missing.
    """
    rows = []
    for k, fold in enumerate(folds):
        for sid in sorted(fold):
            if sid not in true_items:
                continue
            true = {i: int(true_items[sid][i]) for i in instrument.item_ids}
            raw = {i: _num(pred_items.get(sid, {}).get(i)) for i in instrument.item_ids}
            pred = {i: (None if v is None else round(v, decimals)) for i, v in raw.items()}
            dim_true = {d: round(v, decimals) for d, v in instrument.dimension_scores(true).items()}
            dim_pred = {d: (None if v is None else round(v, decimals))
                        for d, v in instrument.dimension_scores(raw).items()}
            rows.append(
                {
                    "session_id": sid,
                    "fold": k,
                    "items": {"pred": pred, "true": true},
                    "dimensions": {"pred": dim_pred, "true": dim_true},
                }
            )
    return rows


def _dimensions(rows: Sequence[Mapping]) -> list[str]:
    dims: list[str] = []
    for r in rows:
        for d in r["dimensions"]["true"]:
            if d not in dims:
                dims.append(d)
    return dims


def plot_data(rows: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Per dimension, the scatter rows ``{"session", "fold", "actual", "predicted"}`` (missing left out)."""
    out: dict[str, list[dict]] = {d: [] for d in _dimensions(rows)}
    for r in rows:
        for d in out:
            p = r["dimensions"]["pred"].get(d)
            a = r["dimensions"]["true"].get(d)
            if p is not None and a is not None:
                out[d].append({"session": r["session_id"], "fold": r["fold"], "actual": a, "predicted": p})
    return out


def write_plots(rows: Sequence[Mapping], out_dir: str | Path) -> dict[str, Path]:
    """Write ``dimensions/{dim}.json`` per dimension of the rows (a JSON list of scatter rows; dvc.yaml
    declares the folder once, ``x: actual``, ``y: predicted``, template ``scatter``, so any instrument's
    dimensions are plotted) and one PNG with a panel per dimension (identity line, Pearson r in each
    panel's title). The folder is replaced as a whole. Returns ``{dim: path, "png": path}``.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from care.evaluation.metrics import score_metrics

    out_dir = Path(out_dir)
    data = plot_data(rows)
    paths: dict[str, Path] = {}
    with atomic_dir(out_dir / DIMENSIONS) as tmp:
        for dim, points in data.items():
            atomic_write_json(tmp / f"{dim}.json", points)
            paths[dim] = out_dir / DIMENSIONS / f"{dim}.json"

    dims = list(data)
    fig, axes = plt.subplots(1, max(1, len(dims)), figsize=(4.2 * max(1, len(dims)), 4.2), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        points = data[dim]
        a = np.array([p["actual"] for p in points], dtype=float)
        p = np.array([p["predicted"] for p in points], dtype=float)
        m = score_metrics(p.tolist(), a.tolist())
        r = "n/a" if m["pearson"] is None else f"{m['pearson']:.2f}"
        ax.scatter(a, p, s=12, alpha=0.6)
        if points:
            lo = float(min(a.min(), p.min()))
            hi = float(max(a.max(), p.max()))
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=1)
        ax.set_title(f"{dim}: r = {r} (n = {len(points)})")
        ax.set_xlabel("client-rated")
        ax.set_ylabel("predicted")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    paths["png"] = atomic_write_bytes(out_dir / PNG_NAME, buf.getvalue())
    return paths
