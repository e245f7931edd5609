"""The typed step documents (care.run.documents) dump to exactly the JSON the run writes: same keys, same order,
ints kept as ints, keys the run writes only with a value left out without one."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from care.data.folds import folds_document
from care.evaluation.gate import GateFailed, evaluate_gate
from care.params import GateParams
from care.run.aggregate import cv_summary
from care.run.documents import CvDetail, FoldScores, FoldsPlan, Gate, RunResult, RunWarning

GOOD = {"mean": {"goal": {"pearson": 0.5, "mse": 0.4}},
        "baselines": {"train_mean": {"goal": {"pearson": 0.1, "mse": 0.9}},
                      "counselor": {"goal": {"pearson": None, "mse": None}}},
        "baselines_n": {"train_mean": {"goal": 10}, "counselor": {"goal": 0}}}


def _same_json(doc, model) -> bool:
    return json.dumps(doc, indent=2) == json.dumps(model.as_json(), indent=2)


def test_the_gate_document_round_trips_in_order_with_its_optional_baseline():
    doc = evaluate_gate(GOOD, GateParams(min_pearson={"*": 0.3}, beat_on_pearson=["counselor", "train_mean"]))
    gate = Gate.model_validate(doc)
    assert _same_json(doc, gate)
    assert any("baseline" in c for c in doc["checks"]) and any("baseline" not in c for c in doc["checks"])
    assert gate.passed and gate.not_applied[0].baseline == "counselor"
    failing = Gate.model_validate(evaluate_gate({}, GateParams()))
    with pytest.raises(GateFailed, match="cv.mean has dimensions"):
        failing.raise_if_failed()


def test_the_folds_plan_is_the_folds_json():
    from conftest import session_dict
    from care.data.schema import Session

    sessions = [Session.model_validate(session_dict(session_id=f"s{i}", client_id=f"c{i % 2}")) for i in range(4)]
    doc = folds_document([["s0", "s2"], ["s1", "s3"]], sessions, seed=7)
    plan = FoldsPlan.model_validate(doc)
    assert _same_json(doc, plan)
    assert plan.held_out(1) == ["s1", "s3"] and plan.session_ids() == [["s0", "s2"], ["s1", "s3"]]


def test_fold_scores_keep_ints_and_leave_out_an_absent_zero_shot():
    doc = {"fold": 0, "transcripts": {"sessions": 1, "truncated": 0, "mean_tokens": 12.5},
           "predictions": {"expected": {"s1": {"1": 3.25, "2": None}}, "greedy": {"s1": {"1": 3, "2": None}}},
           "spread": {"s1": {"1": 0.5, "2": 1.0}}, "unparsed": {"expected": 0, "greedy": 1},
           "digit_mass": {"mean": 0.9, "min": 0.8}, "rationale_quality": None, "train": {"wall_s": 1.5},
           "examples": {"sessions": 1, "examples": 2, "score_only_fallback_sessions": 0}}
    scores = FoldScores.model_validate(doc)
    assert _same_json(doc, scores) and "zero_shot" not in scores.as_json()
    assert scores.predictions["greedy"]["s1"]["1"] == 3 and isinstance(scores.predictions["greedy"]["s1"]["1"], int)
    with_zero_shot = {**doc, "zero_shot": {"predictions": {"s1": {"1": 2.0, "2": 2.5}}, "unparsed": 0}}
    assert _same_json(with_zero_shot, FoldScores.model_validate(with_zero_shot))
    with pytest.raises(ValidationError):  # a misspelt key is refused, never carried silently
        FoldScores.model_validate({**doc, "digit_mas": {}})


def test_the_summary_reads_the_typed_detail_and_gate():
    warning = {"scope": "cv", "check": "pearson", "dimension": "goal", "value": None, "threshold": 0.0, "message": "m"}
    fields = {name: None for name in CvDetail.model_fields}
    fields.update(mean=GOOD["mean"], baselines=GOOD["baselines"],
                  warnings=[RunWarning.model_validate(w) for w in (warning, {**warning, "scope": "fold 0"})])
    detail = CvDetail.model_construct(**fields)  # only what the summary reads
    gate = Gate.model_validate(evaluate_gate(GOOD, GateParams(min_pearson={"*": 0.3}, beat_on_pearson=[])))
    summary = cv_summary(detail, gate)
    assert summary["goal"] == {"pearson": 0.5, "mse": 0.4, "best_r": 0.1, "best_r_by": "train_mean", "best_mse": 0.9,
                               "best_mse_by": "train_mean"}
    assert (summary["gate_passed"], summary["gate_failed"], summary["warnings"]) == (True, 0, 1)
    result = RunResult(run="r", status="completed", failed_steps=[], gate=gate, registration=None, error=None,
                       interrupted=False, warnings=[RunWarning.model_validate(warning)], replaced=None)
    assert [w.dimension for w in result.cv_warnings] == ["goal"]


def test_the_documents_module_imports_only_pydantic():
    """The CLI and every step import it: no torch, no ZenML, no other module of the project."""
    path = Path(__file__).resolve().parents[1] / "care" / "run" / "documents.py"
    top = {(n.module or "").split(".")[0] for n in ast.parse(path.read_bytes()).body if isinstance(n, ast.ImportFrom)}
    top |= {a.name.split(".")[0] for n in ast.parse(path.read_bytes()).body if isinstance(n, ast.Import)
            for a in n.names}
    assert top <= {"__future__", "typing", "pydantic"}
