"""A run on data it cannot learn from says so, gates honestly and registers nothing: constant client
ratings and no counselor ratings, CI-sized, with the default gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zenml_env import care_world

ROOT = Path(__file__).resolve().parents[1]
CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]
DEFAULT_GATE = ["--set", "gate.min_pearson={'*': 0.3}", "--set", "gate.max_mse={'*': 1.0}",
                "--set", "gate.beat_on_pearson=[counselor]", "--set", "gate.beat_on_mse=[train_mean]"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("honest")
    env = care_world(base)
    rows = [json.loads(line) for line in (ROOT / "data" / "sessions.jsonl").read_text("utf-8").splitlines()[:60]]
    for row in rows:
        row["client_ratings"] = {k: 4 for k in row["client_ratings"]}
        row["counselor_ratings"] = None
    data = base / "constant.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return base, env, data


def care(world, *args):
    base, env, _ = world
    return subprocess.run([*CARE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_nothing_learnt_warns_gates_honestly_and_registers_nothing(world):
    base, _, data = world
    out = base / "constant"
    proc = care(world, "train", "--params", "params.ci.yaml", "--set", f"data.path={data}", *DEFAULT_GATE,
                "--set", "eval.zero_shot=false", "--set", "eval.rationale_sample=0",
                "--metrics-dir", str(out / "metrics"), "--plots-dir", str(out / "plots"),
                "--set", f"release.out={out / 'release'}")
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr
    for dim in ("goal", "task", "bond"):
        assert f"warning: cv: {dim}: Pearson r is undefined" in err
        assert f"warning: cv: {dim}: MSE is not below always predicting the training mean" in err
        assert f"gate check not applied: {dim}.pearson > counselor.{dim}.pearson" in err
        assert f"gate check failed: {dim}.mse < train_mean.{dim}.mse" in err
    gate = json.loads((out / "metrics" / "gate.json").read_text())
    assert gate["passed"] is False and len(gate["not_applied"]) == 3 and gate["loosened"] == []
    detail = json.loads((out / "metrics" / "cv_detail.json").read_text())
    checks = {(w["scope"], w["check"], w["dimension"]) for w in detail["warnings"]}
    assert ("cv", "pearson", "goal") in checks and ("fold 0", "mse_vs_train_mean", "bond") in checks
    summary = json.loads((out / "metrics" / "cv.json").read_text())
    assert summary["warnings"] >= 6 and summary["gate_not_applied"] == 3 and summary["gate_passed"] is False
    assert not (out / "release").exists()
    listing = care(world, "models", "list")
    assert listing.returncode == 1 and "no model named 'care-alliance' in the registry yet" in listing.stderr
