"""Metrics, baselines, cv.json and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from care.evaluation.baselines import (
    baseline_results,
    client_items,
    counselor_predictions,
    helper_proxy_predictions,
    train_mean_predictions,
)
from care.data.instrument import load_instrument
from care.evaluation.metrics import aggregate, cv_document, evaluate, score_metrics
from care.evaluation.plots import PNG_NAME, predictions_rows, write_plots
from care.data.schema import Session

INSTRUMENT = load_instrument("wai-sr")
ITEMS = INSTRUMENT.item_ids
BY_DIM = INSTRUMENT.items_by_dimension


def test_score_metrics_match_scipy_and_numpy():
    pred = [1.2, 2.5, 3.1, 4.8, 2.2, 3.3, 4.1]
    true = [1, 3, 3, 5, 2, 4, 3]
    m = score_metrics(pred, true)
    assert m["n"] == 7
    assert m["pearson"] == pytest.approx(stats.pearsonr(pred, true)[0], abs=1e-12)
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-12)
    assert m["mse"] == pytest.approx(float(np.mean((np.array(pred) - np.array(true)) ** 2)), abs=1e-12)
    assert "note" not in m


def test_constant_prediction_gives_none_with_note_and_valid_json():
    m = score_metrics([3.0, 3.0, 3.0, 3.0], [1, 2, 4, 5])
    assert m["pearson"] is None and m["spearman"] is None
    assert "constant predictions" in m["note"]
    assert m["mse"] == pytest.approx((4 + 1 + 1 + 4) / 4)
    text = json.dumps(m, allow_nan=False)  # no NaN anywhere
    assert "NaN" not in text
    empty = score_metrics([], [])
    assert empty["n"] == 0 and empty["mse"] is None and "note" in empty
    with pytest.raises(ValueError):
        score_metrics([1.0], [1, 2])


def _true(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {f"s{i}": {it: int(rng.integers(1, 6)) for it in ITEMS} for i in range(n)}


def test_evaluate_excludes_unparsed_and_counts_them():
    true = _true(10)
    pred = {sid: {it: v + 0.5 for it, v in r.items()} for sid, r in true.items()}
    pred["s0"]["4"] = None  # goal item unparsed
    del pred["s1"]  # no prediction at all
    res = evaluate(pred, true, INSTRUMENT)
    assert res["n_sessions"] == 10
    assert res["n_missing"] == 1 + 12
    assert res["n_sessions_incomplete"] == 2
    assert res["dimensions"]["goal"]["n"] == 8
    assert res["dimensions"]["task"]["n"] == 9 and res["dimensions"]["bond"]["n"] == 9
    assert res["items"]["4"]["n"] == 8 and res["items"]["1"]["n"] == 9
    assert res["dimensions"]["goal"]["mse"] == pytest.approx(0.25)
    # dimension = mean of its items
    sids = [s for s in sorted(true) if s not in ("s0", "s1")]
    p = [np.mean([pred[s][i] for i in BY_DIM["goal"]]) for s in sids]
    t = [np.mean([true[s][i] for i in BY_DIM["goal"]]) for s in sids]
    assert res["dimensions"]["goal"]["pearson"] == pytest.approx(stats.pearsonr(p, t)[0])


def test_aggregate_mean_and_sample_std():
    folds = [
        {"dimensions": {"goal": {"pearson": 0.2, "spearman": 0.1, "mse": 1.0, "n": 10}}},
        {"dimensions": {"goal": {"pearson": 0.4, "spearman": 0.3, "mse": 2.0, "n": 12}}},
        {"dimensions": {"goal": {"pearson": None, "spearman": 0.5, "mse": 3.0, "n": 11}}},
    ]
    agg = aggregate(folds)
    assert agg["mean"]["goal"]["pearson"] == pytest.approx(0.3)
    assert agg["std"]["goal"]["pearson"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert agg["mean"]["goal"]["mse"] == pytest.approx(2.0)
    assert agg["std"]["goal"]["mse"] == pytest.approx(1.0)
    assert agg["n"]["goal"] == 33
    assert agg["n_folds"]["goal"] == {"pearson": 2, "spearman": 3, "mse": 3}
    single = aggregate(folds[:1])
    assert single["std"]["goal"]["pearson"] is None


def _sessions(n: int, seed: int = 0, counselor_every: int = 2) -> list[Session]:
    true = _true(n, seed)
    out = []
    for k, (sid, r) in enumerate(sorted(true.items())):
        out.append(
            Session(
                session_id=f"{sid}_{seed}",
                client_id=f"c{k}",
                language="en",
                client_ratings=r,
                counselor_ratings={i: min(5, v + 1) for i, v in r.items()} if k % counselor_every == 0 else None,
                helper_ratings={"relevance": r["1"], "other": 0},
            )
        )
    return out


def test_baselines():
    train, test = _sessions(20, 1), _sessions(10, 2)
    tm = train_mean_predictions(train, test, INSTRUMENT)
    assert set(tm) == {s.session_id for s in test}
    assert tm[test[0].session_id]["1"] == pytest.approx(np.mean([s.client_ratings["1"] for s in train]))
    cp = counselor_predictions(test)
    assert len(cp) == 5
    hp = helper_proxy_predictions(test, INSTRUMENT, {"relevance": "task"})
    assert set(hp[test[0].session_id]) == set(BY_DIM["task"])
    res = baseline_results(train, test, INSTRUMENT, helper_map={"relevance": "task"})
    assert set(res) == {"counselor", "train_mean", "helper_proxy"}
    assert res["counselor"]["dimensions"]["goal"]["n"] == 5
    assert res["train_mean"]["dimensions"]["goal"]["pearson"] is None
    assert res["train_mean"]["dimensions"]["goal"]["mse"] is not None
    assert res["helper_proxy"]["dimensions"]["task"]["n"] == 10
    assert res["helper_proxy"]["dimensions"]["goal"]["n"] == 0
    with pytest.raises(Exception, match="not in instrument"):
        helper_proxy_predictions(test, INSTRUMENT, {"relevance": "nope"})


def test_cv_document_shape_and_rounding():
    folds, bases = [], []
    for k in range(3):
        test = _sessions(12, 10 + k)
        train = _sessions(20, 20 + k)
        true = client_items(test)
        pred = {sid: {i: v + 0.123456 for i, v in r.items()} for sid, r in true.items()}
        folds.append(evaluate(pred, true, INSTRUMENT))
        b = baseline_results(train, test, INSTRUMENT)
        b["zero_shot"] = evaluate({sid: {i: 3.0 for i in r} for sid, r in true.items()}, true, INSTRUMENT)
        bases.append(b)
    doc = cv_document(folds, bases, unparsed=4, targets="rationale", extra={"readout": "expected"})
    json.dumps(doc, allow_nan=False)
    assert set(doc["mean"]) == {"goal", "task", "bond"}
    assert set(doc["mean"]["goal"]) == {"pearson", "spearman", "mse"}
    assert set(doc["std"]["bond"]) == {"pearson", "spearman", "mse"}
    assert set(doc["baselines"]) == {"counselor", "train_mean", "zero_shot"}
    assert set(doc["baselines"]["counselor"]["task"]) == {"pearson", "spearman", "mse"}
    assert doc["baselines"]["train_mean"]["goal"]["pearson"] is None
    assert doc["unparsed"] == 4 and doc["targets"] == "rationale" and doc["readout"] == "expected"
    assert len(doc["folds"]) == 3 and doc["folds"][2]["fold"] == 2
    assert doc["mean"]["goal"]["mse"] == pytest.approx(0.123456**2, abs=1e-4)
    assert doc["mean"]["goal"]["pearson"] == pytest.approx(1.0)
    assert set(doc["items"]["mean"]) == set(ITEMS)
    for v in _floats(doc):
        assert v == round(v, 4)
    with pytest.raises(ValueError):
        cv_document(folds, bases[:2], 0, "rationale")


def _floats(tree):
    if isinstance(tree, float):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _floats(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _floats(v)


def test_predictions_rows_and_plots(tmp_path):
    true = _true(9)
    pred = {sid: {it: v - 0.25 for it, v in r.items()} for sid, r in true.items()}
    pred["s3"]["1"] = None
    folds = [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "s7", "s8"]]
    rows = predictions_rows(pred, true, INSTRUMENT, folds)
    assert [r["session_id"] for r in rows] == [f"s{i}" for i in range(9)]
    assert rows[3]["fold"] == 1 and rows[3]["dimensions"]["pred"]["task"] is None
    assert rows[0]["dimensions"]["true"]["goal"] == pytest.approx(np.mean([true["s0"][i] for i in BY_DIM["goal"]]))
    assert set(rows[0]) == {"session_id", "fold", "items", "dimensions"}
    paths = write_plots(rows, tmp_path / "plots")
    png = paths["png"]
    assert png.name == PNG_NAME and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    task = json.loads(paths["task"].read_text())
    goal = json.loads(paths["goal"].read_text())
    assert len(task) == 8 and len(goal) == 9
    assert set(goal[0]) == {"session", "fold", "actual", "predicted"}
    assert math.isclose(goal[0]["actual"] - goal[0]["predicted"], 0.25)
