"""Two runs in one checkout never mix their results.

- The content cache publishes an entry once (`care.cache.new_entry`, `publish_file`): writers racing on one key
  each build privately, the first rename wins, the others are discarded; a reader holding an entry never sees
  it change or go.
- One run at a time writes a set of outputs (`care.run.outputs.outputs_lock`); a second is refused in one line
  naming the first, or waits (`--wait`).
- End to end: two real `care train` (CI-sized, tiny preset) started together on one data set, one ZenML store
  and one cache, each with its own outputs, while a third tries the first one's outputs. Each run reads back
  its own pipeline run: its metrics, its release and its registered version are its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from care.cache import new_entry, publish_file
from care.errors import CareError

ROOT = Path(__file__).resolve().parents[1]

RACE = """
import os, sys, time
from pathlib import Path
from care.cache import new_entry
entry, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
with new_entry(entry, complete=lambda p: (p / "done").is_file()) as tmp:
    for i in range(40):
        (tmp / f"part{i}").write_text(tag)
    (tmp / "done").write_text(tag)
print((entry / "done").read_text())
"""


def test_writers_racing_on_one_key_publish_it_once_and_readers_keep_theirs(tmp_path):
    entry = tmp_path / "cache" / "fits" / "k"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(entry), f"w{i}", str(go)], stdout=subprocess.PIPE,
                              text=True) for i in range(4)]
    go.touch()
    seen = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    winner = (entry / "done").read_text()
    assert seen == {winner}  # every writer ends up using the one published entry
    assert {f.read_text() for f in entry.iterdir()} == {winner}  # never a mix of two writers' files
    assert sorted(os.listdir(entry.parent)) == ["k"]  # the losers' private builds are gone
    held = open(entry / "part0")  # a reader holding the entry ...
    with new_entry(entry, complete=lambda p: (p / "done").is_file()) as tmp:
        (tmp / "done").write_text("late")
    assert held.read() == winner and (entry / "done").read_text() == winner  # ... is never disturbed
    held.close()


def test_an_incomplete_leftover_is_set_aside_and_a_failed_build_leaves_nothing(tmp_path):
    entry = tmp_path / "k"
    entry.mkdir()
    (entry / "model").mkdir()  # an older version of the tool wrote in place and was killed before its marker
    with new_entry(entry, complete=lambda p: (p / "done").is_file()) as tmp:
        (tmp / "done").write_text("new")
    assert sorted(os.listdir(entry)) == ["done"]
    with pytest.raises(RuntimeError):
        with new_entry(tmp_path / "j") as tmp:
            (tmp / "x").write_text("half")
            raise RuntimeError("killed mid-build")
    assert sorted(os.listdir(tmp_path)) == ["k"]


def test_a_cache_file_is_published_once(tmp_path):
    path = tmp_path / "scores" / "k.json"
    publish_file(path, b"first")
    held = open(path, "rb")
    publish_file(path, b"second")  # another run published first: its file stays
    assert path.read_bytes() == b"first" and held.read() == b"first"
    held.close()
    assert sorted(os.listdir(path.parent)) == ["k.json"]


HOLD = """
import sys, time
from pathlib import Path
from care.run.outputs import Outputs, outputs_lock
root = Path(sys.argv[1])
with outputs_lock(Outputs.at(root / "metrics", root / "plots"), root / "release", "care train"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holding(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_outputs_is_refused_naming_the_first_or_waits(tmp_path):
    from care.run.outputs import Outputs, outputs_lock

    first = _holding(tmp_path, 120)
    try:
        mine = Outputs.at(tmp_path / "other-metrics", tmp_path / "plots")  # shares only plots/
        with pytest.raises(CareError) as exc:
            with outputs_lock(mine, None, "care train"):
                pass
        msg = str(exc.value)
        assert f"plots is being written by `care train` (pid {first.pid}" in msg and "nothing started" in msg
        with outputs_lock(Outputs.at(tmp_path / "m2", tmp_path / "p2"), tmp_path / "r2", "care train"):
            pass  # other outputs: runs side by side
    finally:
        first.kill()  # a crash: the operating system releases the lock
        first.wait()
    short = _holding(tmp_path, 1.5)
    with outputs_lock(Outputs.at(tmp_path / "metrics", tmp_path / "plots"), tmp_path / "release", "care train",
                      wait_s=60):
        assert short.poll() is not None or short.wait(timeout=30) == 0
    assert not (tmp_path / "metrics").exists()  # the lock is a hidden sibling, never inside an output


# ------------------------------------------------------------------------------------------ two real runs

CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]


def _train(base: Path, env: dict, name: str, *extra: str) -> tuple[Path, subprocess.Popen]:
    out = base / name
    args = ["train", "--params", "params.ci.yaml", "--metrics-dir", str(out / "metrics"), "--plots-dir",
            str(out / "plots"), "--set", f"release.out={out / 'release'}", "--set", "eval.rationale_sample=0",
            "--set", "eval.zero_shot=false", *extra]  # what this test is about is shared by the smaller runs
    proc = subprocess.Popen([*CARE, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return out, proc


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_concurrent_runs_keep_their_own_results(tmp_path):
    from care.release.manifest import verify_package
    from zenml_env import care_world

    env = care_world(tmp_path)  # one ZenML store and one cache for both runs
    a_out, a = _train(tmp_path, env, "a")
    b_out, b = _train(tmp_path, env, "b", "--set", "eval.interval_levels=[70]")  # same fits, other metrics
    lock = tmp_path / "a" / ".metrics.care-lock"  # a holds its outputs once its lock names it
    deadline = time.monotonic() + 600
    while not (lock.exists() and lock.read_text()):
        assert a.poll() is None and time.monotonic() < deadline, "run a ended or hung before it took its outputs"
        time.sleep(0.5)
    third = subprocess.run([*CARE, "train", "--params", "params.ci.yaml", "--metrics-dir", str(a_out / "metrics"),
                            "--plots-dir", str(tmp_path / "c" / "plots"), "--set",
                            f"release.out={tmp_path / 'c' / 'release'}"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    (a_so, a_se), (b_so, b_se) = a.communicate(timeout=1500), b.communicate(timeout=1500)
    assert a.returncode == 0, a_se[-3000:]
    assert b.returncode == 0, b_se[-3000:]
    assert third.returncode == 1 and "is being written by `care train`" in third.stderr, third.stderr[-2000:]
    assert f"(pid {a.pid}" in third.stderr and "Traceback" not in third.stderr
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())

    def own(out: Path, stdout: str, levels: list[int]) -> tuple[int, str]:
        detail = json.loads((out / "metrics" / "cv_detail.json").read_text())
        assert detail["intervals"]["levels"] == levels  # its own metrics, not the other run's
        manifest = verify_package(out / "release")
        assert json.loads((out / "release" / "calibration.json").read_text())["levels"] == levels
        assert manifest["cv"]["intervals"]["levels"] == levels
        version = int(stdout.split("registered care-alliance version ")[1].split()[0])
        return version, hashlib.sha256((out / "release" / "manifest.json").read_bytes()).hexdigest()

    va, sha_a = own(a_out, a_so, [80, 90])
    vb, sha_b = own(b_out, b_so, [70])
    assert va != vb and sha_a != sha_b
    runs = {line.split("run ")[1].split()[0] for line in (a_so + b_so).splitlines() if line.startswith("run ")}
    assert len(runs) == 2
    for version, sha in ((va, sha_a), (vb, sha_b)):
        shown = json.loads(subprocess.run([*CARE, "models", "show", str(version)], cwd=ROOT, env=env,
                                          capture_output=True, text=True, check=True).stdout)
        assert shown["metadata"]["package_sha256"] == sha  # the version registered is the release installed
    listing = json.loads(subprocess.run([*CARE, "models", "list", "--json"], cwd=ROOT, env=env, capture_output=True,
                                        text=True, check=True).stdout)
    stages = {row["version"]: row["stage"] for row in listing}
    assert sorted(stages) == sorted([va, vb]) and sorted(map(str, stages.values())) == ["archived", "staging"]
    fits = tmp_path / "cache" / "fits"
    assert len(list(fits.glob("*/done.json"))) == 3  # two folds + the final fit: built twice, published once
    leftovers = [p for p in (tmp_path / "cache").rglob(".*") if p.name.endswith((".tmp", ".stale"))]
    assert leftovers == []
