"""The release gate: thresholds and baseline comparisons on the cross-validated means (`metrics/cv_detail.json`).

Checks, per dimension of ``cv["mean"]`` (plus any dimension named explicitly in the params):
- ``{dim}.pearson >= min_pearson[dim]`` and ``{dim}.mse <= max_mse[dim]`` ("*" = every other dimension);
- for each baseline in ``beat_on_pearson``: ``{dim}.pearson > {baseline}.{dim}.pearson``;
- for each baseline in ``beat_on_mse``: ``{dim}.mse < {baseline}.{dim}.mse``.
A missing or null value (model or baseline) fails its check: nothing passes silently. One exception: a
baseline that exists in the run but has no value for a dimension because the data cannot give one (no
counselor ratings, no helper ratings: n = 0 in ``baselines_n``) is not applied to that dimension, and the
gate document lists it under ``not_applied`` with the reason. A baseline the run does not compute at all
(switched off, misspelt) or a dimension the instrument lacks is refused before the run
(``check_gate_names``); here it would still fail. ``loosened`` lists where the gate is weaker than the defaults, so a
loosened gate is visible in the document.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from care.errors import CareError, UsageError, label
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


def _absent(cv: Mapping, name: str, dim: str) -> bool:
    """The run computed baseline `name` but the data gives it no value for `dim` (n = 0)."""
    n = _get(cv, "baselines_n", name, dim)
    return name in (cv.get("baselines") or {}) and n == 0


def check_gate_names(gate: GateParams, dimensions: list[str], baselines: list[str]) -> None:
    """Refuse (usage error, exit 2) a gate that can never pass because it names a dimension the instrument does
    not have or a baseline the run does not compute (`care.evaluation.baselines.computed_baselines`). Checked
    before any work (`care.run.preflight`); the numeric bounds (min_pearson <= 1, max_mse >= 0) are checked when
    the params load (`care.params.GateParams`)."""
    for field in ("min_pearson", "max_mse"):
        unknown = [d for d in getattr(gate, field) if d != WILDCARD and d not in dimensions]
        if unknown:
            raise UsageError(f"gate.{field}: {', '.join(label(d) for d in unknown)} not a dimension of the instrument "
                             f"({', '.join(dimensions)}; {WILDCARD} for every dimension)")
    for field in ("beat_on_pearson", "beat_on_mse"):
        unknown = [b for b in getattr(gate, field) if b not in baselines]
        if unknown:
            raise UsageError(f"gate.{field}: {', '.join(label(b) for b in unknown)} not a baseline this run computes "
                             f"({', '.join(baselines)}; see eval.text_baseline, eval.zero_shot, eval.helper_proxy)")


def loosened(gate: GateParams) -> list[str]:
    """Where `gate` is weaker than the default gate (lower Pearson bars, higher MSE bars, fewer baselines)."""
    default = GateParams()
    out = []
    for key, bar in default.min_pearson.items():
        if gate.min_pearson.get(key, -math.inf) < bar:
            out.append(f"min_pearson[{key}] {gate.min_pearson.get(key, 'unset')} below the default {bar:g}")
    for key, bar in default.max_mse.items():
        if gate.max_mse.get(key, math.inf) > bar:
            out.append(f"max_mse[{key}] {gate.max_mse.get(key, 'unset')} above the default {bar:g}")
    out += [f"beat_on_pearson lacks {b} (default)" for b in default.beat_on_pearson if b not in gate.beat_on_pearson]
    out += [f"beat_on_mse lacks {b} (default)" for b in default.beat_on_mse if b not in gate.beat_on_mse]
    return out


def evaluate_gate(cv: Mapping, gate: GateParams) -> dict:
    """``metrics/gate.json``: ``{"passed", "checks", "failed", "not_applied", "loosened"}``."""
    mean = cv.get("mean") or {}
    dims = list(mean)
    checks: list[dict] = []
    not_applied: list[dict] = []
    for dim, t in _expand(gate.min_pearson, dims):
        checks.append(
            _check(f"{dim}.pearson >= {t:g}", dim, "pearson", _get(mean, dim, "pearson"), t, lambda v, t: v >= t)
        )
    for dim, t in _expand(gate.max_mse, dims):
        checks.append(_check(f"{dim}.mse <= {t:g}", dim, "mse", _get(mean, dim, "mse"), t, lambda v, t: v <= t))
    baselines = cv.get("baselines") or {}
    for metric, names, op, ok in (("pearson", gate.beat_on_pearson, ">", lambda v, t: v > t),
                                  ("mse", gate.beat_on_mse, "<", lambda v, t: v < t)):
        for name in names:
            for dim in dims:
                check = f"{dim}.{metric} {op} {name}.{dim}.{metric}"
                if _absent(cv, name, dim):
                    not_applied.append({"check": check, "baseline": name, "dimension": dim,
                                        "reason": f"baseline {name} has no values for {dim} in this data (n = 0)"})
                    continue
                checks.append(_check(check, dim, metric, _get(mean, dim, metric), _get(baselines, name, dim, metric),
                                     ok, baseline=name))
    if not dims:
        checks.append(
            {"check": "cv.mean has dimensions", "dimension": None, "metric": None, "value": None,
             "threshold": None, "verdict": "fail"}
        )
    failed = [c["check"] for c in checks if c["verdict"] != "pass"]
    return {"passed": not failed, "checks": checks, "failed": failed, "not_applied": not_applied,
            "loosened": loosened(gate)}


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
