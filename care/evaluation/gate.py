"""The release gate: thresholds and baseline comparisons on the cross-validated means of ``metrics/cv.json``.

Checks, per dimension of ``cv["mean"]`` (plus any dimension named explicitly in the params):
- ``{dim}.pearson >= min_pearson[dim]`` and ``{dim}.mse <= max_mse[dim]`` ("*" = every other dimension);
- for each baseline in ``beat_on_pearson``: ``{dim}.pearson > {baseline}.{dim}.pearson``;
- for each baseline in ``beat_on_mse``: ``{dim}.mse < {baseline}.{dim}.mse``.
A missing or null value (model or baseline) fails its check: nothing passes silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from care.errors import CareError
from care.params import GateParams

WILDCARD = "*"


class GateFailed(CareError):
    """The candidate did not pass the gate; the message names every failed check."""

    exit_code = 3

    def __init__(self, failed: list[str]):
        self.failed = list(failed)
        super().__init__("gate failed: " + "; ".join(self.failed))


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(tree: Mapping, *path: str):
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _expand(thresholds: Mapping[str, float], dims: list[str]) -> list[tuple[str, float]]:
    named = [(d, float(t)) for d, t in thresholds.items() if d != WILDCARD]
    out = list(named)
    if WILDCARD in thresholds:
        out += [(d, float(thresholds[WILDCARD])) for d in dims if d not in thresholds]
    order = {d: i for i, d in enumerate(dims)}
    return sorted(out, key=lambda x: (order.get(x[0], len(order)), x[0]))


def _check(check: str, dim: str, metric: str, value, threshold, ok, **extra) -> dict:
    v, t = _num(value), _num(threshold)
    passed = v is not None and t is not None and ok(v, t)
    return {
        "check": check,
        "dimension": dim,
        "metric": metric,
        "value": None if v is None else round(v, 4),
        "threshold": None if t is None else round(t, 4),
        **extra,
        "verdict": "pass" if passed else "fail",
    }


def evaluate_gate(cv: Mapping, gate: GateParams) -> dict:
    """``metrics/gate.json``: ``{"passed": bool, "checks": [...], "failed": [check, ...]}``."""
    mean = cv.get("mean") or {}
    dims = list(mean)
    checks: list[dict] = []
    for dim, t in _expand(gate.min_pearson, dims):
        checks.append(
            _check(f"{dim}.pearson >= {t:g}", dim, "pearson", _get(mean, dim, "pearson"), t, lambda v, t: v >= t)
        )
    for dim, t in _expand(gate.max_mse, dims):
        checks.append(_check(f"{dim}.mse <= {t:g}", dim, "mse", _get(mean, dim, "mse"), t, lambda v, t: v <= t))
    baselines = cv.get("baselines") or {}
    for name in gate.beat_on_pearson:
        for dim in dims:
            checks.append(
                _check(
                    f"{dim}.pearson > {name}.{dim}.pearson", dim, "pearson", _get(mean, dim, "pearson"),
                    _get(baselines, name, dim, "pearson"), lambda v, t: v > t, baseline=name,
                )
            )
    for name in gate.beat_on_mse:
        for dim in dims:
            checks.append(
                _check(
                    f"{dim}.mse < {name}.{dim}.mse", dim, "mse", _get(mean, dim, "mse"),
                    _get(baselines, name, dim, "mse"), lambda v, t: v < t, baseline=name,
                )
            )
    if not dims:
        checks.append(
            {"check": "cv.mean has dimensions", "dimension": None, "metric": None, "value": None,
             "threshold": None, "verdict": "fail"}
        )
    failed = [c["check"] for c in checks if c["verdict"] != "pass"]
    return {"passed": not failed, "checks": checks, "failed": failed}


def raise_if_failed(gate_doc: Mapping) -> None:
    """Raise ``GateFailed`` naming every failed check of a ``evaluate_gate`` result."""
    if gate_doc.get("passed"):
        return
    lines = []
    for c in gate_doc.get("checks") or []:
        if c.get("verdict") == "pass":
            continue
        if c.get("value") is None:
            why = "value missing"
        elif c.get("threshold") is None:
            why = f"value {c['value']}, comparison value missing"
        else:
            why = f"value {c['value']} vs {c['threshold']}"
        lines.append(f"{c['check']} ({why})")
    raise GateFailed(lines or ["no checks passed"])
