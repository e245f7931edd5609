"""The release gate on cv.json."""

from __future__ import annotations

import copy

import pytest

from care.errors import CareError
from care.evaluation.gate import GateFailed, evaluate_gate, raise_if_failed
from care.params import GateParams, load_params


def _m(p, s, mse):
    return {"pearson": p, "spearman": s, "mse": mse}


GOOD = {
    "mean": {"goal": _m(0.52, 0.5, 0.9), "task": _m(0.5, 0.48, 0.95), "bond": _m(0.46, 0.44, 0.7)},
    "std": {"goal": _m(0.05, 0.05, 0.1), "task": _m(0.05, 0.05, 0.1), "bond": _m(0.05, 0.05, 0.1)},
    "baselines": {
        "counselor": {"goal": _m(0.3, 0.3, 1.36), "task": _m(0.3, 0.3, 1.61), "bond": _m(0.22, 0.2, 1.24)},
        "train_mean": {"goal": _m(None, None, 1.04), "task": _m(None, None, 1.12), "bond": _m(None, None, 0.86)},
    },
}


def test_defaults_are_meaningful():
    gate = GateParams()
    assert gate.min_pearson == {"*": 0.3} and gate.max_mse == {"*": 1.0}
    assert gate.beat_on_pearson == ["counselor"] and gate.beat_on_mse == ["train_mean"]
    assert load_params(None).gate == gate


def test_gate_passes_on_good_metrics():
    doc = evaluate_gate(GOOD, GateParams())
    assert doc["passed"] is True and doc["failed"] == []
    # 3 dims x (min_pearson, max_mse, beat counselor, beat train_mean)
    assert len(doc["checks"]) == 12
    c = doc["checks"][0]
    assert c == {
        "check": "goal.pearson >= 0.3", "dimension": "goal", "metric": "pearson",
        "value": 0.52, "threshold": 0.3, "verdict": "pass",
    }
    beat = [c for c in doc["checks"] if c.get("baseline") == "train_mean"]
    assert [c["check"] for c in beat][0] == "goal.mse < train_mean.goal.mse"
    raise_if_failed(doc)  # no exception


def test_gate_fails_naming_every_failed_check():
    bad = copy.deepcopy(GOOD)
    bad["mean"]["goal"]["pearson"] = 0.1  # below 0.3 and below counselor 0.3
    bad["mean"]["bond"]["mse"] = 1.3  # above 1.0 and above train_mean 0.86
    doc = evaluate_gate(bad, GateParams())
    assert doc["passed"] is False
    assert set(doc["failed"]) == {
        "goal.pearson >= 0.3",
        "goal.pearson > counselor.goal.pearson",
        "bond.mse <= 1",
        "bond.mse < train_mean.bond.mse",
    }
    with pytest.raises(GateFailed) as info:
        raise_if_failed(doc)
    assert isinstance(info.value, CareError)
    for check in doc["failed"]:
        assert check in str(info.value)
    assert "value 0.1" in str(info.value)
    assert len(info.value.failed) == 4


def test_none_or_missing_value_fails():
    bad = copy.deepcopy(GOOD)
    bad["mean"]["task"]["pearson"] = None
    del bad["baselines"]["counselor"]["bond"]
    doc = evaluate_gate(bad, GateParams())
    assert "task.pearson >= 0.3" in doc["failed"]
    assert "task.pearson > counselor.task.pearson" in doc["failed"]
    assert "bond.pearson > counselor.bond.pearson" in doc["failed"]
    assert not doc["passed"]
    # a baseline that is undefined (train_mean has no pearson) fails a pearson comparison against it
    doc = evaluate_gate(GOOD, GateParams(beat_on_pearson=["train_mean"], beat_on_mse=[]))
    assert not doc["passed"] and len(doc["failed"]) == 3
    # an absent baseline fails too
    doc = evaluate_gate(GOOD, GateParams(beat_on_pearson=["zero_shot"]))
    assert "goal.pearson > zero_shot.goal.pearson" in doc["failed"]
    # a named dimension absent from cv.json fails; an empty cv.json fails
    doc = evaluate_gate(GOOD, GateParams(min_pearson={"empathy": 0.2}))
    assert doc["failed"] == ["empathy.pearson >= 0.2"]
    assert evaluate_gate({}, GateParams())["passed"] is False


def test_explicit_threshold_overrides_wildcard():
    doc = evaluate_gate(GOOD, GateParams(min_pearson={"*": 0.3, "bond": 0.5}, max_mse={}, beat_on_pearson=[], beat_on_mse=[]))
    assert doc["failed"] == ["bond.pearson >= 0.5"]
    assert [c["dimension"] for c in doc["checks"]] == ["goal", "task", "bond"]


def test_a_baseline_the_data_cannot_give_is_not_applied_and_says_so():
    cv = copy.deepcopy(GOOD)
    cv["baselines"]["counselor"] = {d: _m(None, None, None) for d in ("goal", "task", "bond")}
    cv["baselines_n"] = {"counselor": {d: 0 for d in ("goal", "task", "bond")},
                         "train_mean": {d: 40 for d in ("goal", "task", "bond")}}
    doc = evaluate_gate(cv, GateParams())
    assert doc["passed"] is True
    assert [c["check"] for c in doc["not_applied"]] == [f"{d}.pearson > counselor.{d}.pearson" for d in ("goal", "task", "bond")]
    assert all("no values" in c["reason"] for c in doc["not_applied"])
    assert not any(c.get("baseline") == "counselor" for c in doc["checks"])
    # train_mean still applies: a model worse than the mean fails even when counselor is absent
    cv["mean"]["task"]["mse"] = 1.2
    assert "task.mse < train_mean.task.mse" in evaluate_gate(cv, GateParams(max_mse={}))["failed"]


def test_a_loosened_gate_is_visible_in_the_document():
    assert evaluate_gate(GOOD, GateParams())["loosened"] == []
    doc = evaluate_gate(GOOD, GateParams(min_pearson={"*": 0.1}, beat_on_pearson=[], beat_on_mse=[]))
    assert doc["loosened"] == ["min_pearson[*] 0.1 below the default 0.3", "beat_on_pearson lacks counselor (default)",
                               "beat_on_mse lacks train_mean (default)"]
