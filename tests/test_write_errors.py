"""Every writer turns an OSError into one line naming the path and the reason, and leaves nothing half-written.

The class lives in `care.fsutil.cannot_write`: the atomic file writers, `atomic_dir` (models pull, import
table, the tiny base, the ONNX export, plots), the cache's `new_entry`/`publish_file`, the release install and
the locks all raise it; the CLI turns any OSError left over into the same kind of line. Variants: a directory
that refuses new entries even to root (sysfs), and a full file system (ENOSPC raised at the write or the
rename).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from care.errors import CareError
from care.fsutil import atomic_dir, atomic_write_bytes
from conftest import UNWRITABLE, needs_sysfs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "ja-alliance"


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@needs_sysfs
@pytest.mark.parametrize("command", [
    ["synth", "--sessions", "5"],
    ["import", "table", str(EXAMPLE / "data"), "--map", str(EXAMPLE / "mapping.yaml")],
])
def test_commands_writing_where_nothing_can_be_created_fail_in_one_line(run_cli, command):
    out = UNWRITABLE / "care-test-out"
    result = run_cli(*command, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {out}")
    assert "cannot write (Operation not permitted" in result.output or "Permission denied" in result.output


def test_a_full_disk_in_a_directory_build_leaves_the_old_directory_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(CareError) as exc:
        with atomic_dir(out) as tmp:
            with open(tmp / "a", "w") as fh:
                fh.write("new")
                _full()
    assert str(exc.value) == f"{out}: cannot write (No space left on device)"
    assert (out / "a").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out"]

    real = os.replace
    calls = []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old directory is aside, the new one cannot go in
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(CareError, match="cannot write .No space left on device"):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("new")
    monkeypatch.undo()
    assert (out / "a").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out"]  # never goes missing


def test_a_full_disk_in_a_file_write_or_a_cache_entry_is_one_line(tmp_path, monkeypatch):
    from care.cache import new_entry, publish_file

    monkeypatch.setattr(os, "fsync", _full)
    for write in (lambda p: atomic_write_bytes(p, b"x"), lambda p: publish_file(p, b"x")):
        path = tmp_path / "f.json"
        with pytest.raises(CareError) as exc:
            write(path)
        assert str(exc.value) == f"{path}: cannot write (No space left on device)"
        assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with pytest.raises(CareError, match="e: cannot write .No space left on device"):
        with new_entry(tmp_path / "e") as tmp:
            (tmp / "x").write_text("half")
            _full()
    assert os.listdir(tmp_path) == []


@needs_sysfs
def test_a_lock_file_that_cannot_be_created_is_one_line():
    from care.fsutil import file_lock

    with pytest.raises(CareError, match="care-test.lock: cannot write"):
        with file_lock(UNWRITABLE / "care-test.lock", "care train", exclusive=True, wait_s=0, refusal=str):
            pass


def test_an_oserror_no_writer_caught_is_still_one_line_in_the_cli(run_cli, tmp_path, monkeypatch):
    import care.data.synth as synth

    def disk_full(out, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out) / "sessions.jsonl"))

    monkeypatch.setattr(synth, "write_corpus", disk_full)
    result = run_cli("synth", "--sessions", "5", "--out", tmp_path / "c")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"error: {tmp_path / 'c' / 'sessions.jsonl'}: No space left on device"
