"""`care score` streams and resumes (care.release.scoring): --out is checked before the package loads (FIFO,
symbolic link, directory, read-only directory, full file system); results go to a partial file beside --out as
they are scored; a run killed part-way is resumed by the next one, which scores only what is missing and writes
the bytes of an uninterrupted run; a partial of another job is started over, saying why; a locked partial and
an input changed while it was scored are refused."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import corpus_rows, write_jsonl_file
from test_release import build_tiny_release

N_SESSIONS = 12


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_jsonl_file(tmp_path_factory.mktemp("stream_in"), corpus_rows(N_SESSIONS, n_turns=6, seed=8))


@pytest.fixture(scope="module")
def reference(rel, inputs, tmp_path_factory):
    """The output of uninterrupted runs, per --session-batch."""
    from typer.testing import CliRunner

    from care_cli.main import app

    out = {}
    for group in (1, 2):
        path = tmp_path_factory.mktemp("reference") / "scores.jsonl"
        result = CliRunner().invoke(app, ["score", "--model", str(rel["package"]), str(inputs), "--out", str(path),
                                          "--session-batch", str(group)])
        assert result.exit_code == 0, result.output
        out[group] = path.read_bytes()
    assert len(out[1].splitlines()) == N_SESSIONS
    return out


@pytest.fixture
def no_load(monkeypatch):
    """Loading the package fails the test: a preflight refusal must come before it."""
    import care.release.onnx_runtime as ort_module

    def refuse(*args, **kwargs):
        raise AssertionError("the package was loaded before --out was checked")

    monkeypatch.setattr(ort_module, "load_package", refuse)


def _one_line_refusal(result, code: tuple[int, ...] = (1,)) -> str:
    assert result.exit_code in code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _score(run_cli, rel, inputs, out, *extra):
    return run_cli("score", "--model", rel["package"], inputs, "--out", out, *extra)


# ------------------------------------------------------------------------------------------------- preflight


def test_fifo_symlink_and_directory_refused_before_loading(run_cli, rel, inputs, tmp_path, no_load):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert "not a regular file" in _one_line_refusal(_score(run_cli, rel, inputs, fifo))
    target = tmp_path / "target.jsonl"
    target.write_text("keep\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    assert "symbolic link" in _one_line_refusal(_score(run_cli, rel, inputs, link))
    assert target.read_text() == "keep\n"
    (tmp_path / "dir").mkdir()
    assert "is a directory" in _one_line_refusal(_score(run_cli, rel, inputs, tmp_path / "dir"), (2,))
    partial = tmp_path / ".p.jsonl.partial"  # a partial path planted as a link is refused too
    partial.symlink_to(target)
    assert "symbolic link" in _one_line_refusal(_score(run_cli, rel, inputs, tmp_path / "p.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.jsonl.partial", "dir", "fifo.jsonl", "link.jsonl",
                                                         "target.jsonl"]


def test_full_file_system_refused_before_loading(run_cli, rel, inputs, tmp_path, no_load, monkeypatch):
    import care.fsutil

    monkeypatch.setattr(care.fsutil, "free_bytes", lambda directory: 4096)
    line = _one_line_refusal(_score(run_cli, rel, inputs, tmp_path / "o.jsonl"))
    assert "4096 bytes free" in line and "o.jsonl" in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no new file can be created in: mode 0555 for a normal user; as root (who ignores modes) a
    read-only tmpfs, when this machine lets us mount one."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("running as root and cannot mount a read-only tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_read_only_directory_refused_before_loading(run_cli, rel, inputs, read_only_dir, no_load):
    line = _one_line_refusal(_score(run_cli, rel, inputs, read_only_dir / "o.jsonl"))
    assert "cannot write" in line and ("Read-only" in line or "Permission denied" in line)


def test_check_output_file_is_the_late_check_too(tmp_path, monkeypatch):
    """The final rename runs the same check: --out turned into a FIFO while scoring is refused there."""
    from care.errors import CareError
    from care.release.scoring import _Partial

    out = tmp_path / "o.jsonl"
    with _Partial(out, {"format": "x"}, 1, lambda note: None) as partial:
        partial.resume(iter(()), lambda: None)
        partial.write(['{"session_id": "a"}'])
        os.mkfifo(out)
        with pytest.raises(CareError, match="not a regular file"):
            partial.publish()
    assert (tmp_path / ".o.jsonl.partial").read_text() == '{"session_id": "a"}\n'


# ------------------------------------------------------------------------------------------------- resume


def _killed_run(rel, inputs, out, after: int, *extra: str) -> None:
    """`care score` in a child process that SIGKILLs itself once `after` sessions are written to the partial."""
    code = (
        "import os, signal\n"
        "import care.release.scoring as scoring\n"
        "write, seen = scoring._Partial.write, [0]\n"
        "def killing(self, lines):\n"
        "    write(self, lines)\n"
        "    seen[0] += len(lines)\n"
        f"    if seen[0] >= {after}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "scoring._Partial.write = killing\n"
        "from care_cli.main import app\n"
        f"app({['score', '--model', str(rel['package']), str(inputs), '--out', str(out), *extra]!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.fixture
def counted(monkeypatch):
    """How many sessions reach the scorer in this process."""
    import care.evaluation.readout as readout

    seen = []
    original = readout.iter_scores

    def counting(backend, builder, sessions, **kwargs):
        def each():
            for s in sessions:
                seen.append(s.session_id)
                yield s

        return original(backend, builder, each(), **kwargs)

    monkeypatch.setattr(readout, "iter_scores", counting)
    return seen


def test_a_killed_run_resumes_and_equals_an_uninterrupted_one(run_cli, rel, inputs, reference, tmp_path, counted):
    out = tmp_path / "scores.jsonl"
    partial, state = tmp_path / ".scores.jsonl.partial", tmp_path / ".scores.jsonl.partial.json"
    _killed_run(rel, inputs, out, 5)
    assert not out.exists() and state.is_file()
    assert len(partial.read_bytes().splitlines()) == 5
    result = _score(run_cli, rel, inputs, out)
    assert result.exit_code == 0, result.output
    assert f"resuming: 5 session(s) already scored in {partial} are kept" in result.stderr
    assert "(5 kept from the interrupted run)" in result.stderr
    assert counted == [f"s{k:05d}" for k in range(5, N_SESSIONS)]  # the first five were not scored again
    assert out.read_bytes() == reference[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]


def test_a_cut_line_and_a_cut_group_are_scored_again(run_cli, rel, inputs, reference, tmp_path, counted):
    out = tmp_path / "scores.jsonl"
    partial = tmp_path / ".scores.jsonl.partial"
    _killed_run(rel, inputs, out, 6, "--session-batch", "2")
    lines = partial.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6
    partial.write_bytes(b"".join(lines[:5]) + lines[5][:20])  # a kill inside a group's write: 5 lines and a half
    result = _score(run_cli, rel, inputs, out, "--session-batch", "2")
    assert result.exit_code == 0, result.output
    assert "resuming: 4 session(s)" in result.stderr  # back to the last whole group of two
    assert counted == [f"s{k:05d}" for k in range(4, N_SESSIONS)]
    assert out.read_bytes() == reference[2]


def test_a_partial_of_another_job_is_started_over(run_cli, rel, inputs, reference, tmp_path, counted):
    out = tmp_path / "scores.jsonl"
    _killed_run(rel, inputs, out, 3, "--session-batch", "2")
    result = _score(run_cli, rel, inputs, out)  # other options: --session-batch 1
    assert result.exit_code == 0, result.output
    assert "starting over: the partial output" in result.stderr and "belongs to other options" in result.stderr
    assert len(counted) == N_SESSIONS and out.read_bytes() == reference[1]

    counted.clear()
    other = write_jsonl_file(tmp_path / "other.jsonl", corpus_rows(N_SESSIONS, n_turns=6, seed=9))
    _killed_run(rel, other, out, 3)
    result = _score(run_cli, rel, inputs, out)
    assert "belongs to another input" in result.stderr and result.exit_code == 0
    assert len(counted) == N_SESSIONS and out.read_bytes() == reference[1]

    counted.clear()
    (tmp_path / ".scores.jsonl.partial").write_text('{"session_id": "s00000"}\n{"session_id": "s99999"}\n')
    result = _score(run_cli, rel, inputs, out)  # its state file is gone (the run above published)
    assert "has no readable state file" in result.stderr and len(counted) == N_SESSIONS


def test_a_partial_that_is_not_the_inputs_prefix_is_started_over(run_cli, rel, inputs, reference, tmp_path, counted):
    out = tmp_path / "scores.jsonl"
    partial = tmp_path / ".scores.jsonl.partial"
    _killed_run(rel, inputs, out, 4)
    lines = partial.read_bytes().splitlines(keepends=True)
    partial.write_bytes(lines[1] + lines[0])
    result = _score(run_cli, rel, inputs, out)
    assert result.exit_code == 0 and "does not hold the input's first sessions in order" in result.stderr
    assert len(counted) == N_SESSIONS and out.read_bytes() == reference[1]


def test_a_locked_partial_is_refused(run_cli, rel, inputs, tmp_path):
    out = tmp_path / "scores.jsonl"
    partial = tmp_path / ".scores.jsonl.partial"
    with open(partial, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        line = _one_line_refusal(_score(run_cli, rel, inputs, out))
    assert "another `care score` is writing it" in line and not out.exists()


def test_an_input_changed_while_scored_is_refused_and_nothing_kept(run_cli, rel, inputs, tmp_path, monkeypatch):
    import care.data.validation as validation

    path = tmp_path / "in.jsonl"
    path.write_bytes(inputs.read_bytes())
    validate = validation.validate_file

    def then_change(*args, **kwargs):
        result = validate(*args, **kwargs)
        with open(path, "ab") as fh:  # an annotator appends a session after validation
            fh.write(inputs.read_bytes().splitlines(keepends=True)[0].replace(b"s00000", b"s77777"))
        return result

    monkeypatch.setattr(validation, "validate_file", then_change)
    out = tmp_path / "scores.jsonl"
    result = _score(run_cli, rel, path, out)  # found after scoring: the progress bar came before
    assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith("error: ")
    assert "changed while it was scored" in result.stderr.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_score_file_is_callable_without_the_cli(rel, inputs, reference, tmp_path):
    import io

    from care.release.scoring import ScoreOptions, score_file

    sink = io.StringIO()
    summary = score_file(inputs, rel["package"], None, ScoreOptions(progress=False), stdout=sink)
    assert sink.getvalue().encode("utf-8") == reference[1]
    assert (summary.n_sessions, summary.n_resumed, summary.calibrated, summary.out) == (N_SESSIONS, 0, True, None)
