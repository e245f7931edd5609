"""`care annotations add`: refusals change nothing; a good file is appended and recorded by `dvc add`.

Every test works in its own copy of a small git + DVC repository (20 synthetic sessions, `dvc add data`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from care.data.intake import TMP_PREFIX, add_annotations, run_dvc

pytestmark = pytest.mark.timeout(300)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    from care.data.synth import write_corpus

    site = tmp_path_factory.mktemp("dvc-site")
    os.environ["DVC_SITE_CACHE_DIR"] = str(site)  # also for the dvc subprocesses the command starts
    repo = tmp_path_factory.mktemp("template") / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    write_corpus(repo / "data", n_sessions=20, seed=0)
    _dvc(repo, "add", "-q", "data")
    return repo


@pytest.fixture
def repo(template_repo, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    dest = tmp_path / "repo"
    shutil.copytree(template_repo, dest, symlinks=True)
    return dest


def _existing(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "data" / "sessions.jsonl").read_text("utf-8").splitlines()]


def _new_rows(n: int, prefix: str = "n", seed: int = 7) -> list[dict]:
    """`n` valid sessions from the generator, with ids (sessions and clients) the repo does not hold."""
    from care.data.synth import generate

    sessions, _ = generate(n_sessions=max(n, 5), seed=seed)
    rows = [json.loads(s.to_json()) for s in sessions[:n]]
    for i, row in enumerate(rows):
        row["session_id"] = f"{prefix}{i:03d}"
        row["client_id"] = f"{prefix}c{i // 2}"
        row["counselor_id"] = f"{prefix}t{i // 2}"
    return rows


def _snapshot(repo: Path) -> dict[str, bytes]:
    """Every file of data/ plus data.dvc, byte for byte (a left-over temp file shows up too)."""
    files = {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "data").iterdir())}
    files["data.dvc"] = (repo / "data.dvc").read_bytes()
    return files


def _texts(rows: list[dict]) -> list[str]:
    out = []
    for row in rows:
        out += [t["text"] for t in row["turns"]]
        out += list((row.get("rationales") or {}).values())
    return out


def _refused(run_cli, repo: Path, new: Path, *extra: str):
    before = _snapshot(repo)
    result = run_cli("annotations", "add", new, "--data", repo / "data", *extra)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert _snapshot(repo) == before
    return result


# ------------------------------------------------------------------------------------------------ accepted


def test_good_file_is_appended_and_recorded(repo, run_cli, write_jsonl, tmp_path):
    rows = _new_rows(4)
    new = write_jsonl(tmp_path / "new.jsonl", rows)
    old_bytes = (repo / "data" / "sessions.jsonl").read_bytes()
    old_dvc = (repo / "data.dvc").read_text()

    result = run_cli("annotations", "add", new, "--data", repo / "data")

    assert result.exit_code == 0, result.output
    data = (repo / "data" / "sessions.jsonl").read_bytes()
    assert data.startswith(old_bytes)
    added = [json.loads(line) for line in data[len(old_bytes):].decode("utf-8").splitlines()]
    assert added == rows
    assert (repo / "data.dvc").read_text() != old_dvc
    new_md5 = next(line.split()[-1] for line in (repo / "data.dvc").read_text().splitlines() if "md5:" in line)
    assert "added 4 session(s) (2 new client(s))" in result.output
    assert new_md5 in result.output
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}
    assert not list((repo / "data").glob(f"{TMP_PREFIX}*"))
    for text in _texts(rows):
        assert text not in result.output


def test_missing_counselor_never_conflicts_and_existing_client_may_grow(repo, run_cli, write_jsonl, tmp_path):
    first = _existing(repo)[0]
    rows = _new_rows(2)
    rows[0].update(client_id=first["client_id"], counselor_id=None, language=first["language"])
    rows[1].update(client_id=first["client_id"], counselor_id=first["counselor_id"], language=first["language"])
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = run_cli("annotations", "add", new, "--data", repo / "data")

    assert result.exit_code == 0, result.output
    assert "(0 new client(s))" in result.output
    assert len(_existing(repo)) == 22


# ------------------------------------------------------------------------------------------------ refused


def test_invalid_file_is_refused_with_every_problem(repo, run_cli, write_jsonl, tmp_path):
    rows = _new_rows(3)
    rows[0]["client_ratings"]["3"] = 9
    rows[2]["turns"] = [t for t in rows[2]["turns"] if t["speaker"] == "counselor"]
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    lines = result.stderr.strip().splitlines()
    assert f"{new}:1 session=n000 field=client_ratings.3: rating outside the scale 1-5" in lines
    assert f"{new}:3 session=n002 field=turns: no client turn" in lines
    assert "2 problem(s); nothing added" in lines[-1]
    for text in _texts(rows):
        assert text not in result.output


def test_session_id_already_present_is_refused(repo, run_cli, write_jsonl, tmp_path):
    rows = _new_rows(2)
    existing_id = _existing(repo)[5]["session_id"]
    rows[1]["session_id"] = existing_id
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    assert f"{new}:2 session={existing_id} field=session_id: session id already present in" in result.stderr
    assert "(line 6)" in result.stderr


def test_duplicate_within_new_file_is_refused(repo, run_cli, write_jsonl, tmp_path):
    rows = _new_rows(3)
    rows[2]["session_id"] = rows[0]["session_id"]
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    assert "field=session_id: duplicate session id" in result.stderr


def test_client_with_another_counselor_is_refused(repo, run_cli, write_jsonl, tmp_path):
    first = _existing(repo)[0]
    rows = _new_rows(1)
    rows[0].update(client_id=first["client_id"], counselor_id="t-other", language=first["language"])
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    assert (f"{new}:1 session=n000 field=counselor_id: client {first['client_id']} already has sessions with "
            f"counselor {first['counselor_id']}") in result.stderr


def test_client_in_another_language_is_refused(repo, run_cli, write_jsonl, tmp_path):
    first = _existing(repo)[0]
    assert first["language"] == "zh"
    rows = _new_rows(1)
    rows[0].update(client_id=first["client_id"], counselor_id=first["counselor_id"], language="en")
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    assert f"{new}:1 session=n000 field=language: client {first['client_id']} already has sessions in language zh" \
        in result.stderr


def test_conflict_inside_the_new_file_is_refused(repo, run_cli, write_jsonl, tmp_path):
    rows = _new_rows(2)  # both of client nc0, counselor nt0
    rows[1]["counselor_id"] = "nt9"
    new = write_jsonl(tmp_path / "new.jsonl", rows)

    result = _refused(run_cli, repo, new)

    assert f"{new}:2 session=n001 field=counselor_id: client nc0 already has sessions with counselor nt0" \
        in result.stderr


def test_untracked_directory_is_refused(repo, run_cli, write_jsonl, tmp_path):
    other = repo / "other"
    shutil.copytree(repo / "data", other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(1))

    result = run_cli("annotations", "add", new, "--data", other)

    assert result.exit_code == 1
    assert "is not tracked by DVC" in result.output and "nothing changed" in result.output
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


def test_data_differing_from_its_dvc_file_is_refused(repo, run_cli, write_jsonl, tmp_path):
    with open(repo / "data" / "card.json", "a") as fh:
        fh.write("\n")
    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(1))

    result = _refused(run_cli, repo, new)

    assert "differs from data.dvc" in result.output and "dvc checkout data" in result.output


# ------------------------------------------------------------------------------------------------ failures


def test_failed_dvc_add_restores_the_old_state(repo, write_jsonl, tmp_path):
    from care.errors import CareError

    def failing_add(args, cwd):
        if args[0] == "add":
            assert (repo / "data" / "sessions.jsonl").read_bytes() != before["data/sessions.jsonl"]
            return 1, "ERROR: simulated failure"
        return run_dvc(args, cwd)

    before = _snapshot(repo)
    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(2))
    with pytest.raises(CareError, match="dvc add data.*failed.*restored"):
        add_annotations(new, repo / "data", dvc=failing_add)
    assert _snapshot(repo) == before


def test_interrupt_after_dvc_add_restores_the_old_state(repo, write_jsonl, tmp_path):
    def interrupted_add(args, cwd):
        out = run_dvc(args, cwd)
        if args[0] == "add":  # data.dvc now records the new data: a Ctrl-C / SIGTERM arrives right here
            assert (repo / "data.dvc").read_bytes() != before["data.dvc"]
            raise KeyboardInterrupt
        return out

    before = _snapshot(repo)
    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(2))
    with pytest.raises(KeyboardInterrupt):
        add_annotations(new, repo / "data", dvc=interrupted_add)
    assert _snapshot(repo) == before
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}


def test_stale_temp_file_of_a_killed_add_is_removed(repo, run_cli, write_jsonl, tmp_path):
    stale = repo / "data" / f"{TMP_PREFIX}abc123.tmp"
    stale.write_bytes(b"half written\n")
    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(1))

    result = run_cli("annotations", "add", new, "--data", repo / "data")

    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}


# ------------------------------------------------------------------------- runs and intake exclude each other

HOLD = """
import sys, time
from care.data.lock import data_lock
with data_lock(sys.argv[1], sys.argv[2], exclusive=sys.argv[3] == "exclusive", wait_s=0):
    print("held", flush=True)
    if float(sys.argv[4]) < 0:  # hold until told to let go
        sys.stdin.readline()
    else:
        time.sleep(float(sys.argv[4]))
"""


def _holder(path: Path, command: str, mode: str, seconds: float) -> subprocess.Popen:
    """Another process holding the data lock as `command` (a run holds it shared, intake exclusively)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), command, mode, str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_intake_is_refused_while_a_run_reads_the_data_and_proceeds_once_it_is_gone(repo, write_jsonl, tmp_path):
    from care.errors import CareError

    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(2))
    run = _holder(repo / "data" / "sessions.jsonl", "care train", "shared", 120)
    try:
        before = _snapshot(repo)
        with pytest.raises(CareError) as exc:
            add_annotations(new, repo / "data")
        assert f"in use by `care train` (pid {run.pid}" in str(exc.value) and "nothing changed" in str(exc.value)
        assert _snapshot(repo) == before
    finally:
        run.kill()  # a crash: the operating system releases the lock
        run.wait()
    assert add_annotations(new, repo / "data").n_added == 2


def test_intake_can_wait_for_a_run_to_finish(repo, write_jsonl, tmp_path):
    import threading

    new = write_jsonl(tmp_path / "new.jsonl", _new_rows(2))
    run = _holder(repo / "data", "care train", "shared", -1)
    outcome: dict = {}

    def intake():
        try:
            outcome["added"] = add_annotations(new, repo / "data", wait_s=60).n_added
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    waiting = threading.Thread(target=intake)
    waiting.start()
    waiting.join(timeout=1.0)
    assert waiting.is_alive() and outcome == {}  # it waits while the run holds the data ...
    run.stdin.write("done\n")
    run.stdin.flush()
    waiting.join(timeout=120)
    assert outcome == {"added": 2} and run.wait(timeout=30) == 0  # ... and adds once the run lets go


def test_a_run_waits_for_intake_then_refuses_naming_it(repo, run_cli, tmp_path, monkeypatch):
    import care.data.lock as lock

    monkeypatch.setattr(lock, "RUN_WAIT_S", 0.5)
    intake = _holder(repo / "data", "care annotations add", "exclusive", 120)
    try:
        result = run_cli("train", "--params", "params.ci.yaml", "--no-release", "--set",
                         f"data.path={repo / 'data' / 'sessions.jsonl'}", "--metrics-dir", tmp_path / "m",
                         "--plots-dir", tmp_path / "p")
    finally:
        intake.kill()
        intake.wait()
    assert result.exit_code == 1 and "in use by `care annotations add`" in result.output, result.output
    assert "after waiting 0.5 s" in result.output and not (tmp_path / "m").exists()
