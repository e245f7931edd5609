"""Registry rules, free of ZenML: what a model version's metadata holds and when a version may move stage.

- `registry_metadata(manifest)` keeps numbers, booleans and a few validated ids from a release manifest
  (CV mean / std per dimension, baselines, gate verdict and check values, data version, git commit,
  params digest, base model, instrument). Strings anywhere else are dropped, so no transcript or
  rationale text can reach the registry.
- A version whose gate failed (or carries no gate verdict) is never promotable, not even with force.
- `production` needs the candidate to be at least as good as the current production holder on every
  dimension: mean Pearson not lower and mean MSE not higher. `force` overrides that comparison only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from care.errors import CareError, UsageError

STAGES = ("staging", "production", "archived")
PROMOTABLE_STAGES = ("staging", "production")

# Top-level string ids copied into the registry (each must look like an id, never free text).
ID_KEYS = ("data_version", "data_dvc_md5", "git_commit", "params_digest", "base_model", "base_revision", "instrument",
           "preset", "finetune", "targets", "readout", "created", "care_version", "format")
# Top-level booleans copied as they are (data_dirty: the data trained on differs from its DVC record).
FLAG_KEYS = ("data_dirty",)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+=\-]{0,255}$")
_CV_KEYS = ("cv", "metrics", "cv_metrics")
HIGHER_IS_BETTER = ("pearson",)
LOWER_IS_BETTER = ("mse",)


def _numeric_tree(value: Any, depth: int = 0) -> Any:
    """Keep only numbers / booleans / None (recursively, keys kept); return None when nothing is left."""
    if depth > 8:
        return None
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value if not (isinstance(value, float) and not math.isfinite(value)) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            kept = _numeric_tree(v, depth + 1)
            if kept is not None and kept != {} and kept != []:
                out[str(k)] = kept
        return out
    if isinstance(value, (list, tuple)):
        kept = [_numeric_tree(v, depth + 1) for v in value]
        kept = [v for v in kept if v is not None and v != {} and v != []]
        return kept
    return None  # strings and anything else: dropped


def _id_value(key: str, value: Any) -> str | None:
    if isinstance(value, dict):  # e.g. instrument: {"name": "wai-sr", ...}
        value = value.get("name") or value.get("id")
    if value is None:
        return None
    value = str(value)
    if not _ID_RE.match(value):
        raise CareError(f"manifest field {key!r} is not an identifier (letters, digits, ._:/@+=- only); "
                        "refusing to put it in the registry")
    return value


_CHECK_RE = re.compile(r"^[\w .<>=:+\-]{1,160}$")


def _gate_checks(checks: Any) -> Any:
    """Gate checks as numbers and booleans, keyed by check name.

    Accepts care.evaluation.gate's list of ``{"check", "value", "threshold", "verdict"}`` (verdict becomes
    ``passed``) or a mapping name -> bool / mapping.
    """
    if isinstance(checks, list):
        named = {}
        for i, c in enumerate(checks):
            if not isinstance(c, dict):
                continue
            name = c.get("check") or c.get("name") or c.get("id")
            key = name if isinstance(name, str) and _CHECK_RE.match(name) else f"check_{i}"
            kept = _numeric_tree({k: v for k, v in c.items() if k in ("value", "threshold", "passed")}) or {}
            if "verdict" in c:
                kept["passed"] = c["verdict"] == "pass"
            named[key] = kept
        return named
    if isinstance(checks, dict):
        return {k: v for k, v in _numeric_tree(checks).items() if _CHECK_RE.match(k)}
    return None


def registry_metadata(manifest: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Registry metadata from a release manifest (plus `extra`, same rules): numbers and ids only.

    Output keys (all optional but ``gate_passed``): the ids in ID_KEYS; the booleans in FLAG_KEYS; ``cv`` =
    {"mean": {dim: {pearson, spearman, mse}}, "std": {...}, "n_folds", ...} (numbers only); ``baselines``
    (numbers only);
    ``gate_passed`` (bool; False when the manifest carries no verdict); ``gate_checks`` = {check: {passed,
    value, threshold}}.
    """
    src: dict[str, Any] = {}
    for part in (manifest, manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else None, extra):
        if part:
            src.update({k: v for k, v in part.items() if k != "files"})
    out: dict[str, Any] = {}
    for key in ID_KEYS:
        if key in src:
            v = _id_value(key, src[key])
            if v is not None:
                out[key] = v
    out.update({key: src[key] for key in FLAG_KEYS if isinstance(src.get(key), bool)})
    cv = next((src[k] for k in _CV_KEYS if isinstance(src.get(k), dict)), {})
    cv = {k: v for k, v in cv.items() if k != "baselines"}
    for key in ("mean", "std"):
        if key not in cv and isinstance(src.get(f"cv_{key}"), dict):
            cv[key] = src[f"cv_{key}"]
    cv = _numeric_tree(cv)
    if cv:
        out["cv"] = cv
    baselines = src.get("baselines")
    if baselines is None:
        baselines = next((src[k].get("baselines") for k in _CV_KEYS if isinstance(src.get(k), dict)), None)
    baselines = _numeric_tree(baselines) if isinstance(baselines, dict) else None
    if baselines:
        out["baselines"] = baselines
    parity = _numeric_tree(src.get("parity")) if isinstance(src.get("parity"), dict) else None
    if parity:
        out["parity"] = parity
    gate = src.get("gate")
    passed = src.get("gate_passed")
    checks = src.get("gate_checks")
    if isinstance(gate, dict):
        passed = gate.get("passed")
        checks = gate.get("checks", checks)
    elif isinstance(gate, bool):
        passed = gate
    out["gate_passed"] = passed is True
    checks = _gate_checks(checks)
    if checks:
        out["gate_checks"] = checks
    return out


# --------------------------------------------------------------------------------------------- rules


@dataclass
class Row:
    dimension: str
    metric: str
    candidate: float | None
    current: float | None
    ok: bool


@dataclass
class Comparison:
    candidate: str
    current: str | None
    rows: list[Row] = field(default_factory=list)

    @property
    def worse(self) -> bool:
        return any(not r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"candidate version {self.candidate} vs production version {self.current or '-'}",
                 f"{'dimension':<12} {'metric':<8} {'candidate':>10} {'production':>10}  verdict"]
        for r in self.rows:
            c = "-" if r.candidate is None else f"{r.candidate:.4f}"
            p = "-" if r.current is None else f"{r.current:.4f}"
            better = "higher" if r.metric in HIGHER_IS_BETTER else "lower"
            lines.append(f"{r.dimension:<12} {r.metric:<8} {c:>10} {p:>10}  {'ok' if r.ok else 'WORSE'} ({better} is better)")
        return "\n".join(lines)


def _cv_mean(meta: dict[str, Any]) -> dict[str, Any]:
    cv = meta.get("cv")
    mean = cv.get("mean") if isinstance(cv, dict) else None
    return mean if isinstance(mean, dict) else {}


def _metric(meta: dict[str, Any], dim: str, metric: str) -> float | None:
    v = _cv_mean(meta).get(dim, {})
    v = v.get(metric) if isinstance(v, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def compare(candidate: dict[str, Any], current: dict[str, Any], candidate_label: str = "?",
            current_label: str | None = None) -> Comparison:
    """Per dimension of the current holder: candidate Pearson >= current, candidate MSE <= current.

    A metric the current holder has and the candidate lacks counts as worse (it cannot be compared).
    """
    cmp = Comparison(candidate_label, current_label)
    dims = sorted(set(_cv_mean(current)) | set(_cv_mean(candidate)))
    for dim in dims:
        for metric in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            c, p = _metric(candidate, dim, metric), _metric(current, dim, metric)
            if p is None:
                ok = True
            elif c is None:
                ok = False
            else:
                ok = c >= p if metric in HIGHER_IS_BETTER else c <= p
            if c is None and p is None:
                continue
            cmp.rows.append(Row(dim, metric, c, p, ok))
    return cmp


@dataclass
class Decision:
    allowed: bool
    reason: str
    comparison: Comparison | None = None
    forced: bool = False


def decide_promotion(candidate: dict[str, Any], stage: str, current: dict[str, Any] | None = None, *,
                     force: bool = False, candidate_label: str = "?", current_label: str | None = None) -> Decision:
    """Whether the candidate (registry metadata) may move to `stage` given the current holder's metadata."""
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if stage == "archived":
        return Decision(True, "archiving is always allowed")
    if candidate.get("gate_passed") is not True:
        return Decision(False, f"version {candidate_label} failed its gate (or has no gate verdict); "
                               "it can never be promoted, not even with --force")
    if stage == "staging" or current is None:
        return Decision(True, f"gate passed; no current {stage} holder to compare with" if current is None
                        else "gate passed")
    cmp = compare(candidate, current, candidate_label, current_label)
    if cmp.worse and not force:
        return Decision(False, f"version {candidate_label} is worse than production version {current_label} "
                               "on at least one dimension (use --force to override)", cmp)
    if cmp.worse:
        return Decision(True, "worse than production, promoted because --force was given", cmp, forced=True)
    return Decision(True, "not worse than production on any dimension", cmp)


def key_metrics(meta: dict[str, Any]) -> str:
    """One short cell for `care models list`: mean Pearson / MSE per dimension."""
    parts = []
    for dim, vals in sorted(_cv_mean(meta).items()):
        if isinstance(vals, dict):
            r, mse = vals.get("pearson"), vals.get("mse")
            fr = f"{r:.3f}" if isinstance(r, (int, float)) else "-"
            fm = f"{mse:.3f}" if isinstance(mse, (int, float)) else "-"
            parts.append(f"{dim} r={fr} mse={fm}")
    return "; ".join(parts) or "-"


def stage_conflicts(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Stages that more than one version holds (`care models list` rows): {stage: [versions]}."""
    by_stage: dict[str, list[int]] = {}
    for row in rows:
        if row.get("stage") in PROMOTABLE_STAGES:
            by_stage.setdefault(row["stage"], []).append(int(row["version"]))
    return {stage: sorted(v) for stage, v in by_stage.items() if len(v) > 1}


def several_holders_message(model_name: str, stage: str, versions: list[int]) -> str:
    """The one-line refusal for a store where several versions hold one stage (a race or another tool)."""
    shown = ", ".join(str(v) for v in versions)
    return (f"model {model_name!r} has {len(versions)} versions in {stage} ({shown}); a stage has one holder, so "
            f"the registry was changed by a race or by another tool. Repair: `care models promote V --stage {stage} "
            f"--force` keeps version V there and archives the others")
