"""Interrupted runs, and the same result twice.

- `care train` (CI-sized params, its own ZenML store and CARE cache) is SIGKILLed, whole process group, in
  the middle of a fold: after fold 1 finished (its `done.json` is in the cache) and while fold 2 is training
  (the process is held at an optimizer step of fold 2 by a hook that only waits, so the kill lands there
  every time instead of racing a 1-second fold). The rerun completes, reuses fold 1 untouched (same inode
  and mtime of its done.json and weights; no "fold 1/2" training in its log) and gives exactly the metrics
  of an uninterrupted run with the same seed.
- Determinism: two uninterrupted runs in separate caches (nothing reused) give identical fold assignments,
  byte-identical adapter weights and identical metrics: cv.json and predictions.jsonl exactly, the raw
  per-fold predictions (full float precision) exactly, i.e. tolerance 0 on CPU.
- `care models pull` SIGKILLed while copying leaves no package at the destination (absent, as before) and
  nothing that verifies as a package beside it; the next pull succeeds.
- `care annotations add` SIGKILLed before its rename leaves sessions.jsonl and data.dvc byte-identical (the
  next add removes the temp file and succeeds); SIGKILLed after the rename, before `dvc add` recorded it,
  data.dvc is unchanged, the next add refuses and changes nothing, and `dvc checkout data --force` (the
  recovery the refusal names) restores the old bytes. Ctrl-C/SIGTERM rollback: tests/test_intake.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zenml_env import clean_subprocess_env

ROOT = Path(__file__).resolve().parents[1]
CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]
DVC = [sys.executable, "-m", "dvc"]
TIMING_KEYS = {"train_seconds", "wall_s", "tokens_per_s", "first_step_s", "tokens_per_s_after_first", "seconds",
               "items_per_s_after_first", "peak_gpu_gib",
               "time_ratio"}  # wall-clock numbers: the only ones allowed to differ

# `care` with a pause point: when a condition named by the environment is reached, write the sentinel file
# and wait (for the SIGKILL). Nothing else changes; without the variables it is plain `care`.
PAUSABLE_CARE = [sys.executable, "-c", r'''
import functools, os, threading
from pathlib import Path

point = os.environ.get("CARE_TEST_PAUSE")
sentinel = Path(os.environ.get("CARE_TEST_SENTINEL", "/nonexistent"))


def pause():
    sentinel.write_text(str(os.getpid()))
    threading.Event().wait()  # until killed


if point == "train":  # at optimizer step N of the fine-tune whose progress label starts with LABEL
    import torch
    import care.model.training

    label, after = os.environ["CARE_TEST_PAUSE_LABEL"], int(os.environ["CARE_TEST_PAUSE_STEP"])
    state = {"label": "", "steps": 0}
    finetune = care.model.training.finetune

    def counted_finetune(*args, **kwargs):
        state["label"], state["steps"] = kwargs.get("desc", ""), 0
        return finetune(*args, **kwargs)

    care.model.training.finetune = counted_finetune
    zero_grad = torch.optim.Optimizer.zero_grad

    @functools.wraps(zero_grad)  # accelerate inspects its signature
    def counted_zero_grad(self, *args, **kwargs):
        zero_grad(self, *args, **kwargs)
        if state["label"].startswith(label):
            state["steps"] += 1
            if state["steps"] == after:
                pause()

    torch.optim.Optimizer.zero_grad = counted_zero_grad
elif point == "copy":  # in `care models pull`, after N files were copied out of the artifact store
    from zenml.io import fileio

    after, copy, n = int(os.environ["CARE_TEST_PAUSE_STEP"]), fileio.copy, [0]

    def counted_copy(*args, **kwargs):
        copy(*args, **kwargs)
        n[0] += 1
        if n[0] == after:
            pause()

    fileio.copy = counted_copy
elif point in ("before-rename", "after-rename"):  # the rename of sessions.jsonl in `care annotations add`
    replace = os.replace

    def watched_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "sessions.jsonl":
            if point == "after-rename":
                replace(src, dst, *args, **kwargs)
            pause()
        return replace(src, dst, *args, **kwargs)

    os.replace = watched_replace

from care_cli.main import app
app()
''']


def _wait_for(predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it exited by itself; the caller's checks say why
        pass
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # the group is gone (children reparented to init are reaped there)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise AssertionError("processes of the killed group are still running")
        time.sleep(0.05)


def _start_paused(cmd: list[str], cwd: Path, env: dict, log: Path, point: str, sentinel: Path, **extra: str):
    env = {**env, "CARE_TEST_PAUSE": point, "CARE_TEST_SENTINEL": str(sentinel), **extra}
    with open(log, "wb") as fh:
        proc = subprocess.Popen([*PAUSABLE_CARE, *cmd], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


# ------------------------------------------------------------------------------------- care train, killed


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("interrupted")
    env = clean_subprocess_env(base / "zenml")
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return base, env


def _train_args(base: Path, name: str) -> list[str]:
    out = base / name
    return ["train", "--params", "params.ci.yaml", "--no-release", "--metrics-dir", str(out / "metrics"),
            "--plots-dir", str(out / "plots")]


def train(world, name: str, cache: str) -> tuple[Path, subprocess.CompletedProcess]:
    base, env = world
    proc = subprocess.run([*CARE, *_train_args(base, name)], cwd=ROOT, env={**env, "CARE_CACHE_DIR": str(base / cache)},
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"care train ({name}) exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return base / name, proc


def _done_files(cache: Path) -> list[Path]:
    return sorted((cache / "fits").glob("*/done.json"))


@pytest.fixture(scope="module")
def reference(world):
    return train(world, "reference", "cache-reference")


def _train_paused_in_fold_2(world, name: str, cache: Path) -> tuple[subprocess.Popen, Path]:
    """`care train` started so that it pauses at optimizer step 3 of fold 2; (process, its sentinel file)."""
    base, env = world
    sentinel = base / f"{name}-paused-in-fold-2"
    proc = _start_paused(_train_args(base, name), ROOT, {**env, "CARE_CACHE_DIR": str(cache)}, base / f"{name}.log",
                         "train", sentinel, CARE_TEST_PAUSE_LABEL="fold 2/", CARE_TEST_PAUSE_STEP="3")
    return proc, sentinel


@pytest.fixture(scope="module")
def interrupted(world):
    """Kill `care train` while fold 2 trains; return what was on disk then, and the completed rerun."""
    base, _ = world
    cache = base / "cache-interrupted"
    proc, sentinel = _train_paused_in_fold_2(world, "killed", cache)
    try:
        _wait_for(lambda: _done_files(cache), "a finished fold's done.json", proc)
        _wait_for(sentinel.exists, "fold 2 training (optimizer step 3)", proc)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    done = _done_files(cache)
    assert len(done) == 1, done  # fold 1 finished, fold 2 did not
    finished = done[0].parent
    stamps = {p: _stamp(p) for p in [done[0], *sorted((finished / "model").iterdir())]}
    assert not (base / "killed" / "metrics" / "cv.json").exists()
    out, rerun = train(world, "resumed", "cache-interrupted")
    return {"finished": finished, "stamps": stamps, "out": out, "rerun": rerun, "cache": cache,
            "killed_log": (base / "killed.log").read_text("utf-8", "replace")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_stops_the_whole_run_and_keeps_finished_folds(world):
    """SIGTERM while fold 2 trains: the run stops there (no further step), exits non-zero, and fold 1 is
    cached for the rerun."""
    base, _ = world
    cache = base / "cache-sigterm"
    proc, sentinel = _train_paused_in_fold_2(world, "terminated", cache)
    try:
        _wait_for(sentinel.exists, "fold 2 training (optimizer step 3)", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        _kill_group(proc)
    log = (base / "terminated.log").read_text("utf-8", "replace")
    assert proc.returncode == 130, log[-3000:]
    assert "interrupted: no further step ran" in log
    assert "scoring" not in log.split("fold 2/2", 1)[1]  # nothing ran after the interrupted fine-tune
    assert not (base / "terminated" / "metrics" / "cv_detail.json").exists()
    assert len(_done_files(cache)) == 1  # fold 1 finished and stays reusable; fold 2 left nothing


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_mid_fold_then_rerun_reuses_the_finished_fold(interrupted):
    assert "fold 1/2" in interrupted["killed_log"] and "fold 2/2" in interrupted["killed_log"]
    assert {p: _stamp(p) for p in interrupted["stamps"]} == interrupted["stamps"]  # untouched, not retrained
    log = interrupted["rerun"].stdout + interrupted["rerun"].stderr
    assert "fold 2/2" in log and "fold 1/2" not in log  # only the unfinished fold trained again
    assert len(_done_files(interrupted["cache"])) == 2
    assert "completed" in interrupted["rerun"].stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resumed_run_gives_the_uninterrupted_metrics(interrupted, reference):
    ref, out = reference[0] / "metrics", interrupted["out"] / "metrics"
    assert json.loads((out / "folds.json").read_text()) == json.loads((ref / "folds.json").read_text())
    assert _without_timing(json.loads((out / "cv_detail.json").read_text())) == \
        _without_timing(json.loads((ref / "cv_detail.json").read_text()))
    assert json.loads((out / "cv.json").read_text()) == json.loads((ref / "cv.json").read_text())
    assert (out / "predictions.jsonl").read_bytes() == (ref / "predictions.jsonl").read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_clean_runs_give_identical_folds_weights_and_metrics(world, reference):
    base, _ = world
    again, _ = train(world, "again", "cache-again")
    ref = reference[0]
    assert (again / "metrics" / "folds.json").read_bytes() == (ref / "metrics" / "folds.json").read_bytes()
    a, b = base / "cache-reference" / "fits", base / "cache-again" / "fits"
    keys = sorted(p.name for p in a.iterdir())
    assert len(keys) == 2 and keys == sorted(p.name for p in b.iterdir())  # same cache keys: same inputs
    for key in keys:
        assert (a / key / "model" / "adapter_model.safetensors").read_bytes() == \
            (b / key / "model" / "adapter_model.safetensors").read_bytes()
    scored = sorted(p.name for p in (base / "cache-reference" / "scores").glob("*.json"))
    assert len(scored) == 2 and scored == sorted(p.name for p in (base / "cache-again" / "scores").glob("*.json"))
    for name in scored:
        raw_a = json.loads((base / "cache-reference" / "scores" / name).read_text())
        raw_b = json.loads((base / "cache-again" / "scores" / name).read_text())
        assert _without_timing(raw_a) == _without_timing(raw_b)  # full float precision: exact
    assert _without_timing(json.loads((again / "metrics" / "cv_detail.json").read_text())) == \
        _without_timing(json.loads((ref / "metrics" / "cv_detail.json").read_text()))
    preds = "metrics/predictions.jsonl"
    assert (again / preds).read_bytes() == (ref / preds).read_bytes()


# ------------------------------------------------------------------------------------- care models pull, killed


def _package(where: Path) -> Path:
    from care.release.manifest import write_manifest

    where.mkdir(parents=True)
    (where / "model.onnx").write_bytes(os.urandom(1 << 16))
    (where / "tokenizer.json").write_text('{"model": "bpe"}', "utf-8")
    (where / "instrument.yaml").write_text("name: wai-sr\n", "utf-8")
    (where / "README.md").write_text("# CARE release\n", "utf-8")
    mean = {d: {"pearson": 0.5, "mse": 1.0} for d in ("goal", "task", "bond")}
    write_manifest(where, {"data_version": "md5-0123", "instrument": "wai-sr", "cv": {"mean": mean},
                           "gate": {"passed": True, "checks": []}})
    return where


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_pull_leaves_no_package_and_the_next_pull_works(tmp_path):
    from care.errors import CareError
    from care.release.manifest import verify_package

    store = tmp_path / "zenml"
    env = {**clean_subprocess_env(store), "OMP_NUM_THREADS": "1"}
    pkg = _package(tmp_path / "pkg")
    register = ("from zenml_registry.client import register_package, promote_on_pass; "
                f"promote_on_pass(register_package({str(pkg)!r}, 'kill-pull'), 'kill-pull', 'staging')")
    reg = subprocess.run([sys.executable, "-c", register], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert reg.returncode == 0, reg.stderr[-3000:]
    dest = tmp_path / "pulled" / "model"
    dest.parent.mkdir()
    pull = ["models", "pull", "--stage", "staging", "--out", str(dest), "--model-name", "kill-pull"]
    sentinel = tmp_path / "paused-in-copy"
    proc = _start_paused(pull, ROOT, env, tmp_path / "pull.log", "copy", sentinel, CARE_TEST_PAUSE_STEP="3")
    try:
        _wait_for(sentinel.exists, "the pull to copy 3 files", proc, timeout=300)
    finally:
        _kill_group(proc)
    assert not dest.exists()  # absent before, absent after: never a partial package at the destination
    left = list(dest.parent.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".model.") and left[0].name.endswith(".tmp")  # hidden temp
    assert len(list(left[0].rglob("*"))) >= 2  # it was killed mid-copy ...
    with pytest.raises(CareError):
        verify_package(left[0])  # ... and what it left is not a package
    again = subprocess.run([*CARE, *pull], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    verify_package(dest)
    assert (dest / "model.onnx").read_bytes() == (pkg / "model.onnx").read_bytes()


# ------------------------------------------------------------------------------------- care annotations add, killed


@pytest.fixture
def dvc_repo(tmp_path):
    from care.data.synth import write_corpus

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site"),
           "OMP_NUM_THREADS": "1"}
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=repo, check=True, env=env)
    write_corpus(repo / "data", n_sessions=20, seed=0)
    subprocess.run([*DVC, "add", "-q", "data"], cwd=repo, check=True, env=env)
    from care.data.synth import generate

    sessions, _ = generate(n_sessions=5, seed=7)
    rows = [json.loads(s.to_json()) for s in sessions[:3]]
    for i, row in enumerate(rows):
        row.update(session_id=f"n{i:03d}", client_id=f"nc{i}", counselor_id=f"nt{i}")
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return repo, env, new


def _state(repo: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "data").iterdir())}
    files["data.dvc"] = (repo / "data.dvc").read_bytes()
    return files


def _dvc_clean(repo: Path, env: dict) -> bool:
    out = subprocess.run([*DVC, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "{}") == {}


def _kill_add(repo: Path, env: dict, new: Path, point: str) -> None:
    sentinel = repo.parent / f"paused-{point}"
    proc = _start_paused(["annotations", "add", str(new), "--data", "data"], repo, env, repo.parent / f"{point}.log",
                         point, sentinel)
    try:
        _wait_for(sentinel.exists, f"the add to reach {point}", proc, timeout=300)
    finally:
        _kill_group(proc)


def _add(repo: Path, env: dict, new: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CARE, "annotations", "add", str(new), "--data", "data"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_add_killed_before_its_rename_leaves_the_old_data(dvc_repo):
    from care.data.intake import TMP_PREFIX

    repo, env, new = dvc_repo
    before = _state(repo)
    _kill_add(repo, env, new, "before-rename")
    after = _state(repo)
    stale = [name for name in after if name not in before]
    assert len(stale) == 1 and Path(stale[0]).name.startswith(TMP_PREFIX)  # the complete temp, never renamed
    assert {k: v for k, v in after.items() if k not in stale} == before  # sessions.jsonl and data.dvc intact
    done = _add(repo, env, new)  # the next add clears the temp and succeeds
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((repo / "data").glob(f"{TMP_PREFIX}*"))
    assert (repo / "data" / "sessions.jsonl").read_bytes().startswith(before["data/sessions.jsonl"])
    assert _dvc_clean(repo, env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_add_killed_after_its_rename_is_refused_then_restored_by_dvc_checkout(dvc_repo):
    repo, env, new = dvc_repo
    before = _state(repo)
    _kill_add(repo, env, new, "after-rename")
    after = _state(repo)
    assert after["data.dvc"] == before["data.dvc"]  # the recorded version is still the old one
    assert after["data/sessions.jsonl"].startswith(before["data/sessions.jsonl"])
    refused = _add(repo, env, new)
    assert refused.returncode == 1
    assert "differs from data.dvc" in refused.stderr and "`dvc checkout data --force`" in refused.stderr
    assert _state(repo) == after  # the refusal changed nothing
    subprocess.run([*DVC, "checkout", "data", "--force"], cwd=repo, env=env, check=True, capture_output=True)
    assert _state(repo) == before  # the documented recovery brings back the old bytes
    assert _dvc_clean(repo, env)
    done = _add(repo, env, new)
    assert done.returncode == 0, done.stderr[-3000:]
