"""Checks before the work: `care train` refuses what would fail late, before ZenML or any training starts.

Params that can never work are refused when they load (exit 2, naming the key); params the data cannot
serve (more folds than clients, a gate naming a dimension or baseline the run lacks) by the preflight, with
the same check functions the late path calls; output paths that cannot be written by the writers' own check.
Nothing is created at the outputs by a refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import UNWRITABLE, needs_sysfs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)  # a hang guard: each refusal takes seconds


def _train(run_cli, tmp_path, *sets: str, release: bool = True):
    args = ["train", "--params", "params.ci.yaml", "--metrics-dir", tmp_path / "m", "--plots-dir", tmp_path / "p",
            "--set", f"release.out={tmp_path / 'r'}"]
    for assignment in sets:
        args += ["--set", assignment]
    return run_cli(*args, *([] if release else ["--no-release"]))


def _nothing_written(tmp_path):
    return not any((tmp_path / name).exists() for name in ("m", "p", "r"))


@pytest.mark.parametrize("assignment, key", [
    ("train.seed=-1", "train.seed"), ("cv.seed=-5", "cv.seed"), ("cv.seed=4294967296", "cv.seed"),
    ("model.base_build.seed=-2", "model.base_build.seed"),
    ("gate.min_pearson={'*': 1.5}", "gate.min_pearson.*"), ("gate.max_mse={goal: -0.1}", "gate.max_mse.goal"),
    ("lora.target_modules=[]", "lora.target_modules"), ("lora.target_modules=['']", "lora.target_modules.0"),
    ("registry.model_name=a/b", "registry.model_name"), ("registry.model_name='my model'", "registry.model_name"),
    ("registry.model_name='x\x01y'", "registry.model_name"), ("registry.model_name=../up", "registry.model_name"),
])
def test_params_that_can_never_work_are_refused_at_load(run_cli, tmp_path, assignment, key):
    result = _train(run_cli, tmp_path, assignment)
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output and "\x01" not in result.output
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("assignment, says", [
    ("cv.folds=100000", "cv.folds=100000 but the data has only 40 client(s)"),  # built 300,000 steps before
    ("cv.folds=41", "cv.folds=41 but the data has only 40 client(s)"),
    ("gate.min_pearson={goall: 0.1}", "gate.min_pearson: goall not a dimension"),
    ("gate.beat_on_pearson=[conselor]", "gate.beat_on_pearson: conselor not a baseline"),
    ("eval.text_baseline=false", "gate.beat_on_mse: tfidf not a baseline"),  # switched off, still named below
    ("eval.helper_proxy={supporter: warmth}", "eval.helper_proxy: dimension(s) warmth"),
])
def test_params_the_data_or_run_cannot_serve_are_refused_before_any_work(run_cli, tmp_path, assignment, says):
    extra = ["gate.beat_on_mse=[tfidf]"] if "text_baseline" in assignment else []
    result = _train(run_cli, tmp_path, assignment, *extra)
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output
    assert _nothing_written(tmp_path)


def test_the_fold_count_check_is_the_one_make_folds_uses(tmp_path):
    from conftest import corpus_rows, write_jsonl_file

    from care.data.folds import make_folds
    from care.data.instrument import load_instrument
    from care.data.reader import read_jsonl
    from care.errors import UsageError

    sessions = read_jsonl(write_jsonl_file(tmp_path, corpus_rows(10))).sessions  # 5 sessions per client
    with pytest.raises(UsageError, match="cv.folds=3 but the data has only 2 client"):
        make_folds(sessions, load_instrument("wai-sr"), 3, 0)


@needs_sysfs
@pytest.mark.parametrize("where", ["release", "metrics", "plots"])
def test_outputs_that_cannot_be_written_are_refused_before_any_work(run_cli, tmp_path, where):
    target = UNWRITABLE / "care-test-output"
    args = ["train", "--params", "params.ci.yaml", "--metrics-dir", target if where == "metrics" else tmp_path / "m",
            "--plots-dir", target if where == "plots" else tmp_path / "p",
            "--set", f"release.out={target if where == 'release' else tmp_path / 'r'}"]
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert f"{target}" in result.output and "cannot write" in result.output and "Traceback" not in result.output
    assert _nothing_written(tmp_path)


def test_outputs_in_a_directory_without_write_permission_are_refused(tmp_path):
    from care.errors import CareError
    from care.run.outputs import check_release_out

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() == 0:  # root writes anyway: then the check must let it (it creates, it does not guess)
            check_release_out(locked / "release")
        else:
            with pytest.raises(CareError, match="cannot write .Permission denied"):
                check_release_out(locked / "release")
        assert os.listdir(locked) == []  # the probe leaves nothing behind
    finally:
        locked.chmod(0o700)


@needs_sysfs
def test_a_zenml_store_that_cannot_be_opened_is_refused_before_any_work(tmp_path):
    from zenml_env import care_world

    env = care_world(tmp_path)  # a store where nothing can be created (a server that does not answer: the same path)
    env.update({"ZENML_STORE_URL": f"sqlite:///{UNWRITABLE}/care-test/zenml.db", "ZENML_STORE_TYPE": "sql"})
    proc = subprocess.run([sys.executable, "-c", "from care_cli.main import app; app()", "train", "--params",
                           "params.ci.yaml", "--metrics-dir", str(tmp_path / "m"), "--plots-dir", str(tmp_path / "p"),
                           "--set", f"release.out={tmp_path / 'r'}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the ZenML store cannot be reached or opened" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "cache").exists()


def test_a_model_name_option_follows_the_registry_rule(run_cli):
    result = run_cli("models", "list", "--model-name", "../../etc")
    assert result.exit_code == 2 and "not a registry name" in result.output and "Traceback" not in result.output
