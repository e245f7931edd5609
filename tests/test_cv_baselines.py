"""The cross-validation's baselines sit on the model's folds: TF-IDF + ridge and the helper-side proxy are
computed per fold on the same held-out sessions, reported per dimension and per item in cv_detail.json, and the
proxy is read from `helper_ratings` only (never from counselor ratings)."""

from __future__ import annotations

import json

from conftest import corpus_rows, write_jsonl_file

from care.params import Params
from care.run.aggregate import cv_detail
from care.run.data import plan_folds, validate_data
from care.run.documents import FoldScores
from care.run.fold_eval import fold_metrics


def _scored(test_ids, items, fold=0):
    """A stand-in for score_fold's result: the model predicts 3 everywhere (the baselines are under test)."""
    pred = {sid: {i: 3.0 for i in items} for sid in test_ids}
    return FoldScores.model_validate({"fold": fold, "predictions": {"expected": pred, "greedy": pred}, "unparsed": {"expected": 0, "greedy": 0},
            "spread": {sid: {i: 1.0 for i in items} for sid in test_ids},
            "digit_mass": {"mean": 1.0, "min": 1.0}, "rationale_quality": None, "train": {"wall_s": 0.0},
            "examples": {"sessions": 1, "examples": 0, "score_only_fallback_sessions": 0},
            "transcripts": {"sessions": len(test_ids), "truncated": 0, "mean_tokens": 100.0}})


def test_fold_metrics_and_cv_json_carry_tfidf_and_helper_proxy(tmp_path):
    rows = corpus_rows(40, n_turns=8, seed=4)
    for k, row in enumerate(rows):
        row["helper_ratings"] = {"detail": row["client_ratings"]["1"] if k % 4 else 5}  # tracks task item 1
        row["counselor_ratings"] = None
    path = write_jsonl_file(tmp_path / "sessions.jsonl", rows)
    p = Params()
    p.data.path = str(path)
    p.cv.folds = 2
    p.eval.helper_proxy = {"detail": ["task", "bond"]}
    data = validate_data(p.data)
    folds = plan_folds(data, p.cv)
    items = [str(i) for i in range(1, 13)]
    results, scored = [], []
    for k in range(2):
        s = _scored(folds.held_out(k), items, k)
        scored.append(s)
        results.append(fold_metrics(data, folds, k, p.eval, s))
    for r in results:
        assert set(r.baselines) == {"counselor", "train_mean", "tfidf", "helper_proxy"}
        proxy = r.baselines["helper_proxy"]
        assert set(proxy["dimensions"]) == {"goal", "task", "bond"}
        assert proxy["dimensions"]["goal"]["n"] == 0  # unmapped: absent, not invented
        assert proxy["dimensions"]["task"]["n"] == len(folds.held_out(r.fold))
        assert r.baselines["counselor"]["dimensions"]["task"]["n"] == 0
    cv = cv_detail(data, results, scored, p.eval, p.cv, p.train).as_json()
    assert json.loads(json.dumps(cv)) == cv
    assert cv["intervals"]["n_sessions"] == 40 and cv["intervals"]["calibration"]["levels"] == [80, 90]
    assert set(cv["baselines"]) == {"counselor", "train_mean", "tfidf", "helper_proxy"}
    # per item: item 1 is what the proxy tracks (except every 4th session)
    assert cv["baselines_items"]["helper_proxy"]["1"]["pearson"] > 0.5
    assert cv["baselines_items"]["helper_proxy"]["4"]["mse"] is None  # goal item: no proxy value
    assert set(cv["baselines_items"]["tfidf"]) == set(items)
    for dim in ("goal", "task", "bond"):
        assert cv["baselines"]["tfidf"][dim]["mse"] is not None


def test_text_baseline_can_be_switched_off(tmp_path):
    path = write_jsonl_file(tmp_path / "sessions.jsonl", corpus_rows(20, n_turns=6, seed=5))
    p = Params()
    p.data.path = str(path)
    p.cv.folds = 2
    p.eval.text_baseline = False
    data = validate_data(p.data)
    folds = plan_folds(data, p.cv)
    r = fold_metrics(data, folds, 0, p.eval, _scored(folds.held_out(0), [str(i) for i in range(1, 13)]))
    assert set(r.baselines) == {"counselor", "train_mean"}
