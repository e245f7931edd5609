"""Conformal intervals: honest coverage near nominal, each fold calibrated on the other folds only, the
normalised method kept only when it is narrower, too few residuals said as the whole scale, a session's
intervals clipped to the scale, and calibrations that do not fit the instrument refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from care.data.instrument import load_instrument
from care.errors import CareError
from care.evaluation.intervals import (BETA, calibrate, check_calibration, cross_check, distribution_sd, radius,
                                       session_intervals)

INST = load_instrument("wai-sr")


def _folds(n: int = 400, k: int = 5, hetero: bool = False, seed: int = 0, scale=None):
    """Out-of-fold predictions whose errors have sd `spread` (hetero) or a constant sd (homoscedastic)."""
    rng = np.random.default_rng(seed)
    folds = [{"predictions": {}, "spread": {}} for _ in range(k)]
    truth = {}
    for s in range(n):
        sid = f"s{s}"
        fold = folds[s % k]
        fold["predictions"][sid], fold["spread"][sid], truth[sid] = {}, {}, {}
        for item in INST.item_ids:
            spread = rng.uniform(0.2, 1.5)
            noise_sd = spread if hetero else 0.8
            y = int(np.clip(round(rng.normal(3.5, 1.0)), 1, 5))
            truth[sid][item] = y
            fold["predictions"][sid][item] = float(np.clip(y + rng.normal(0, noise_sd) * (scale or 1), 1, 5))
            fold["spread"][sid][item] = spread
    return folds, truth


def test_honest_coverage_is_near_nominal_and_normalised_is_kept_only_when_narrower():
    for hetero, kept in ((True, "normalized"), (False, "absolute")):
        folds, truth = _folds(hetero=hetero)
        doc = calibrate(folds, truth, INST, [80, 90])
        assert doc["method"] == kept and doc["levels"] == [80, 90] and doc["n_sessions"] == 400
        check = doc["check"][kept]
        for level in ("80", "90"):  # per dimension within 3 points; items within sampling error (n = 400)
            for dim, cells in check["dimensions"].items():
                assert abs(cells[level]["coverage"] - int(level) / 100) <= 0.03, (hetero, dim, level, cells)
            items = [cells[level]["coverage"] for cells in check["items"].values()]
            assert abs(np.mean(items) - int(level) / 100) <= 0.02 and max(abs(c - int(level) / 100) for c in items) <= 0.07
            for kind in ("dimensions", "items"):
                assert all(c[level]["n"] == 400 and 0 < c[level]["width"] <= 4 for c in check[kind].values())
        cal = doc["calibration"]
        assert cal["method"] == kept and cal["scale"] == [1.0, 5.0]
        assert set(cal["radius"]["items"]) == set(INST.item_ids) and set(cal["radius"]["dimensions"]) == {"goal", "task", "bond"}
        r = cal["radius"]["dimensions"]["bond"]
        assert 0 < r["80"] < r["90"]


def test_each_fold_is_calibrated_on_the_other_folds_only():
    """Fold 0 predicted perfectly, fold 1 badly: calibrated on each other, fold 1 is not covered; a check that
    calibrated on all residuals would cover far more."""
    folds, truth = _folds(n=200, k=2, seed=1)
    for sid in folds[0]["predictions"]:
        folds[0]["predictions"][sid] = {i: float(truth[sid][i]) for i in INST.item_ids}
    for sid in folds[1]["predictions"]:
        folds[1]["predictions"][sid] = {i: float(6 - truth[sid][i]) if truth[sid][i] != 3 else 1.0 for i in INST.item_ids}
    cells = cross_check(folds, truth, INST, [80])["absolute"]["items"]["1"]["80"]
    assert 0.45 <= cells["coverage"] <= 0.6


def test_too_few_residuals_give_the_whole_scale():
    assert radius(np.array([0.1, -0.2, 0.3, 0.1, 0.0]), None, 90) is None
    assert radius(np.array([0.1, -0.2, 0.3, 0.1, 0.0] * 4), None, 80) == pytest.approx(0.3)
    folds, truth = _folds(n=10, k=2)
    doc = calibrate(folds, truth, INST, [95])
    assert doc["calibration"]["radius"]["items"]["1"]["95"] is None
    c = doc["check"]["absolute"]["items"]["1"]["95"]
    assert c["coverage"] == 1.0 and c["width"] == pytest.approx(4.0)


def test_session_intervals_are_clipped_and_follow_the_spread():
    folds, truth = _folds(hetero=True)
    cal = calibrate(folds, truth, INST, [80, 90])["calibration"]
    sure = [0.0, 0.0, 0.0, 0.0, 1.0]
    unsure = [0.2] * 5
    dists = {i: sure if int(i) % 2 else unsure for i in INST.item_ids}
    expected = {i: sum(p * x for p, x in zip(dists[i], INST.scale.points)) for i in INST.item_ids}
    out = session_intervals(cal, INST, expected, dists)
    lo, hi = out["items"]["1"]["80"]  # certain, at the top of the scale
    assert hi == 5.0 and lo < 5.0 and math.isclose(5.0 - lo, cal["radius"]["items"]["1"]["80"] * BETA, rel_tol=1e-9)
    lo2, hi2 = out["items"]["2"]["80"]  # uniform: sd sqrt(2)
    assert 1.0 <= lo2 < 3.0 < hi2 <= 5.0 and hi2 - lo2 > 5.0 - lo
    for kind in ("items", "dimensions"):
        for cells in out[kind].values():
            assert set(cells) == {"80", "90"}
            for a, b in cells.values():
                assert 1.0 <= a <= b <= 5.0
    assert distribution_sd(unsure, INST.scale.points) == pytest.approx(math.sqrt(2))


def test_calibrations_that_do_not_fit_are_refused():
    folds, truth = _folds(n=40, k=2)
    cal = calibrate(folds, truth, INST, [80])["calibration"]
    assert check_calibration(cal, INST, "x") is cal
    with pytest.raises(CareError, match="not a care-intervals/1"):
        check_calibration({**cal, "format": "other"}, INST, "pkg/calibration.json")
    bad = {**cal, "radius": {"dimensions": cal["radius"]["dimensions"],
                             "items": {k: v for k, v in cal["radius"]["items"].items() if k != "7"}}}
    with pytest.raises(CareError, match="pkg/calibration.json: radius.items lacks 7"):
        check_calibration(bad, INST, "pkg/calibration.json")
    neg = {**cal, "radius": {"dimensions": {**cal["radius"]["dimensions"], "goal": {"80": -1}},
                             "items": cal["radius"]["items"]}}
    with pytest.raises(CareError, match="radius.dimensions.goal.80"):
        check_calibration(neg, INST, "c")
    with pytest.raises(CareError, match="between 0 and 100"):
        calibrate(folds, truth, INST, [100])
