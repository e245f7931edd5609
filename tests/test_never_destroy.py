"""Never destroy what is not ours: an output path that exists must be a regular file (for files) or a
release package this tool wrote (for release.out); a FIFO, a device node or someone's directory is refused
and left exactly as it was."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import corpus_rows, write_jsonl_file

from care.errors import CareError
from care.fsutil import atomic_write_json
from care.run.outputs import check_release_out


def test_a_fifo_or_device_at_an_output_path_is_refused_and_kept(tmp_path):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    with pytest.raises(CareError, match="not a regular file"):
        atomic_write_json(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if os.geteuid() == 0:  # a character device like /dev/null, made where it can do no harm
        dev = tmp_path / "null"
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        with pytest.raises(CareError, match="not a regular file"):
            atomic_write_json(dev, {"a": 1})
        assert stat.S_ISCHR(os.lstat(dev).st_mode)
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CareError, match="symbolic link"):
        atomic_write_json(link, {"a": 1})
    assert not (tmp_path / "elsewhere.json").exists()


def test_validate_report_on_a_fifo_exits_1_without_touching_it(run_cli, tmp_path):
    data = write_jsonl_file(tmp_path / "s.jsonl", corpus_rows(3, n_turns=4))
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    result = run_cli("validate", str(data), "--report", str(fifo))
    assert result.exit_code == 1 and "refusing to replace it" in result.output and "Traceback" not in result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_release_out_must_be_absent_empty_or_an_earlier_package(tmp_path):
    check_release_out(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_release_out(tmp_path / "empty")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work", "utf-8")
    with pytest.raises(CareError, match="not a release package this tool wrote"):
        check_release_out(mine)
    assert (mine / "thesis.tex").read_text("utf-8") == "years of work"
    (mine / "manifest.json").write_text('{"format": "something-else/1", "files": {}}', "utf-8")
    with pytest.raises(CareError):
        check_release_out(mine)
    package = tmp_path / "package"
    package.mkdir()
    (package / "manifest.json").write_text('{"format": "care-release/1", "files": {}}', "utf-8")
    check_release_out(package)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CareError):
        check_release_out(fifo)


def test_train_refuses_a_release_out_that_is_not_ours_before_any_work(run_cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", "utf-8")
    result = run_cli("train", "--params", "params.ci.yaml", "--set", f"release.out={mine}",
                     "--metrics-dir", str(tmp_path / "m"))
    assert result.exit_code == 1 and "refusing to replace it" in result.output
    assert (mine / "notes.txt").read_text("utf-8") == "keep me" and not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", [["synth", "--sessions", "5"], ["import", "esconv", "absent-input.json"]])
def test_out_directories_must_be_absent_empty_or_written_by_the_same_command(run_cli, tmp_path, command):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sessions.jsonl").write_text("my own annotations\n", "utf-8")
    result = run_cli(*command, "--out", mine)
    assert result.exit_code == 1 and "refusing to write into it" in result.output and "Traceback" not in result.output
    assert (mine / "sessions.jsonl").read_text("utf-8") == "my own annotations\n"  # checked before any input is read
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert run_cli(*command, "--out", fifo).exit_code == 1 and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_synth_rewrites_its_own_corpus_but_never_a_fifo_inside_it(run_cli, tmp_path):
    out = tmp_path / "corpus"
    assert run_cli("synth", "--sessions", "5", "--out", out).exit_code == 0
    assert run_cli("synth", "--sessions", "6", "--out", out).exit_code == 0  # its own card.json: replaced
    assert len((out / "sessions.jsonl").read_text("utf-8").splitlines()) == 6
    (out / "sessions.jsonl").unlink()
    os.mkfifo(out / "sessions.jsonl")
    result = run_cli("synth", "--sessions", "5", "--out", out)
    assert result.exit_code == 1 and "not a regular file" in result.output
    assert stat.S_ISFIFO(os.lstat(out / "sessions.jsonl").st_mode)


def test_run_outputs_are_checked_before_the_run(tmp_path):
    from care.run.outputs import Outputs, check_outputs

    out = Outputs.at(tmp_path / "metrics", tmp_path / "plots")
    check_outputs(out)  # absent: fine
    (tmp_path / "plots" / "dimensions").mkdir(parents=True)
    (tmp_path / "plots" / "dimensions" / "goal.json").write_text("[]", "utf-8")
    check_outputs(out)  # plot data this tool writes: replaceable
    (tmp_path / "plots" / "dimensions" / "notes.txt").write_text("keep me", "utf-8")
    with pytest.raises(CareError, match="more than the plot data"):
        check_outputs(out)
    (tmp_path / "plots" / "dimensions" / "notes.txt").unlink()
    (tmp_path / "metrics").mkdir()
    os.mkfifo(tmp_path / "metrics" / "cv.json")
    with pytest.raises(CareError, match="not a regular file"):
        check_outputs(out)
