"""The real pipeline on the CI-sized params (tiny preset, 60 sessions, 2 folds), end to end, in subprocesses
with their own ZenML store and cache: validate -> folds -> fine-tune/score/metrics per fold -> aggregate ->
gate -> final fit -> merge -> ONNX export -> package -> register (staging); then scoring with the package,
a rerun that reuses finished folds, and a failing gate that stops before anything is exported."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from care.release.manifest import verify_package
from zenml_env import care_world

ROOT = Path(__file__).resolve().parents[1]
CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    env = care_world(base)
    env.pop("ZENML_LOGGING_VERBOSITY", None)  # the run prints what a person's would (care.logs decides)
    return base, env


def care(world, *args, check=True):
    base, env = world
    proc = subprocess.run([*CARE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"care {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def train(world, name, *extra, check=True):
    base, _ = world
    out = base / name
    args = ["train", "--params", "params.ci.yaml", "--metrics-dir", str(out / "metrics"), "--plots-dir",
            str(out / "plots"), "--set", f"release.out={out / 'release'}", *extra]
    return out, care(world, *args, check=check)


@pytest.fixture(scope="module")
def first_run(world):
    return train(world, "run1")


def test_pipeline_writes_metrics_release_and_registers_in_staging(world, first_run):
    out, proc = first_run
    cv = json.loads((out / "metrics" / "cv_detail.json").read_text())
    assert set(cv["mean"]) == {"goal", "task", "bond"}
    assert set(cv["baselines"]) >= {"counselor", "train_mean", "zero_shot", "tfidf"}
    assert cv["n_folds"] == 2 and cv["n_sessions"] == 60 and cv["targets"] == "rationale"
    for dim in ("goal", "task", "bond"):
        assert cv["mean"][dim]["mse"] is not None
    assert set(cv["readouts"]) == {"expected", "greedy"}
    assert 0.0 <= cv["digit_mass"]["mean"] <= 1.0
    rq = cv["rationale_quality"]
    assert rq["n_pairs"] > 0 and rq["grounded_quotes"] is True and rq["time_ratio"] > 0
    for mode in ("constrained", "unconstrained"):
        assert rq[mode]["n_pairs"] == rq["n_pairs"] and rq[mode]["seconds"] > 0
    assert rq["constrained"]["grounding_rate"] in (None, 1.0)  # 1 by construction (None: no quote)
    iv = cv["intervals"]
    assert iv["levels"] == [80, 90] and iv["n_sessions"] == 60 and iv["method"] in ("absolute", "normalized")
    for kind, names in (("dimensions", ("goal", "task", "bond")), ("items", [str(i) for i in range(1, 13)])):
        for name in names:
            for level in ("80", "90"):
                cell = iv["check"][iv["method"]][kind][name][level]
                assert cell["n"] == 60 and 0 <= cell["coverage"] <= 1 and 0 <= cell["width"] <= 4
    folds = json.loads((out / "metrics" / "folds.json").read_text())
    ids = [sid for f in folds["folds"] for sid in f["sessions"]]
    assert len(ids) == len(set(ids)) == 60
    rows = [json.loads(l) for l in (out / "metrics" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and {r["fold"] for r in rows} == {0, 1}
    gate = json.loads((out / "metrics" / "gate.json").read_text())
    assert gate["passed"] is True and gate["checks"]
    summary = json.loads((out / "metrics" / "cv.json").read_text())
    assert (summary["gate_passed"], summary["gate_failed"], summary["gate_not_applied"]) == (True, 0, 0)
    assert summary["warnings"] == sum(w["scope"] == "cv" for w in cv["warnings"])
    for dim in ("goal", "task", "bond"):
        assert summary[dim]["pearson"] == cv["mean"][dim]["pearson"] and summary[dim]["mse"] == cv["mean"][dim]["mse"]
        best = max((b[dim]["pearson"], name) for name, b in cv["baselines"].items() if b[dim]["pearson"] is not None)
        assert (summary[dim]["best_r"], summary[dim]["best_r_by"]) == best
    numbers = [v for dim in ("goal", "task", "bond") for v in (summary[dim]["pearson"], summary[dim]["mse"],
               summary[dim]["best_r"], summary[dim]["best_mse"])]
    assert len(numbers) <= 20  # one glance in `dvc metrics show`
    assert (out / "plots" / "predicted_vs_actual.png").stat().st_size > 1000
    manifest = verify_package(out / "release")
    assert manifest["gate"]["passed"] is True and manifest["data_version"]
    assert manifest["parity"]["max_logit_diff"] <= 1e-3
    assert "calibration.json" in manifest["files"] and manifest["scoring"]["grounded_quotes"] is True
    card = (out / "release" / "README.md").read_text("utf-8")
    assert "## Calibrated intervals" in card and "80% of clients' own scores fell inside" in card
    assert "in staging" in proc.stdout
    listing = json.loads(care(world, "models", "list", "--json").stdout)
    staged = [v for v in listing if v.get("stage") == "staging"]
    assert len(staged) == 1


def test_run_prints_folds_gate_and_release_without_third_party_chatter(first_run):
    _, proc = first_run
    out = proc.stdout + proc.stderr
    assert "because it is a closure" not in out and "has started" not in out  # Great Expectations, ZenML banners
    assert "fold 1/2" in out and "fold 2/2" in out and "final fit" in out  # the folds' progress bars
    assert "gate passed: " in out and "registered care-alliance version" in out and "warning:" in out
    bars = re.compile(r"^(fold \d+/\d+|final fit|scoring):")  # progress bars: one line a second when captured
    said = [line for line in out.splitlines() if line.strip() and not bars.match(line.strip())]
    assert len(said) < 20 and not any("symbolic shape inference" in line for line in said), said  # 285 before


def test_released_model_scores_new_transcripts(world, first_run, tmp_path):
    out, _ = first_run
    lines = (ROOT / "data" / "sessions.jsonl").read_text("utf-8").splitlines()[:3]
    inp = tmp_path / "new.jsonl"
    inp.write_text("\n".join(lines) + "\n", "utf-8")
    dest = tmp_path / "scores.jsonl"
    care(world, "score", "--model", str(out / "release"), str(inp), "--out", str(dest))
    scored = [json.loads(l) for l in dest.read_text().splitlines()]
    assert [s["session_id"] for s in scored] == [json.loads(l)["session_id"] for l in lines]
    assert all(1.0 <= v["expected"] <= 5.0 for s in scored for v in s["items"].values())
    assert all(set(s["interval"]) == {"goal", "task", "bond"} and set(s["items"]["1"]["interval"]) == {"80", "90"}
               for s in scored)


def test_rerun_reuses_finished_folds(world, first_run):
    base, _ = world
    fits = sorted((base / "cache" / "fits").glob("*/done.json"))
    assert len(fits) == 3  # two folds + the final fit
    before = {p: p.stat().st_mtime_ns for p in fits}
    out, proc = train(world, "run2", "--no-release")
    assert {p: p.stat().st_mtime_ns for p in sorted((base / "cache" / "fits").glob("*/done.json"))} == before
    first = json.loads((first_run[0] / "metrics" / "cv_detail.json").read_text())
    again = json.loads((out / "metrics" / "cv_detail.json").read_text())
    assert again["mean"] == first["mean"] and again["baselines"] == first["baselines"]


def test_failing_gate_stops_before_export_and_names_checks(world, first_run):
    out, proc = train(world, "run3", "--set", "gate.min_pearson={'*': 0.99}", check=False)
    assert proc.returncode == 3
    assert "gate check failed: goal.pearson >= 0.99" in proc.stderr
    assert "nothing was exported" in proc.stderr
    assert not (out / "release").exists()
    gate = json.loads((out / "metrics" / "gate.json").read_text())
    assert gate["passed"] is False
    listing = json.loads(care(world, "models", "list", "--json").stdout)
    assert len([v for v in listing if v.get("stage") == "staging"]) == 1
    assert len(listing) == 1  # the --no-release rerun and this failed gate created no model version


def test_every_step_in_its_own_empty_scratch_space_gives_the_same_results(world, first_run):
    """As if each step ran in its own pod: no shared cache, so models can only travel as artifacts."""
    base, env = world
    scratch = base / "scratch"
    scratch.mkdir()
    isolated = {**env, "CARE_STEP_SCRATCH": str(scratch), "CARE_CACHE_DIR": str(base / "driver-cache")}
    out = base / "isolated"
    args = ["train", "--params", "params.ci.yaml", "--no-release", "--metrics-dir", str(out / "metrics"),
            "--plots-dir", str(out / "plots")]
    proc = subprocess.run([*CARE, *args], cwd=ROOT, env=isolated, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(list(scratch.glob("step-cache-*"))) >= 10  # one per step body
    assert not (base / "driver-cache" / "fits").exists()  # nothing trained outside a step's own space
    first = json.loads((first_run[0] / "metrics" / "cv_detail.json").read_text())
    again = json.loads((out / "metrics" / "cv_detail.json").read_text())
    assert again["mean"] == first["mean"] and again["baselines"] == first["baselines"]
    assert again["items"] == first["items"]
    # the release package itself always reaches release/ through the artifact store (first_run)
