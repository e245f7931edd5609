"""Validation streams (care.data.reader.JsonlStream, care.data.validation.SessionValidator): one session at a
time in memory, the per-row tables validated in chunks with the same problems as in one piece, the sha256 of
exactly the bytes read, long lines skipped in bounded chunks, and a progress bar for long files."""

from __future__ import annotations

import gc
import hashlib
import json

import pytest

from conftest import corpus_rows, session_dict, write_jsonl_file

from care.data.reader import JsonlStream
from care.data.schema import Session
from care.data.validation import validate_file
from care.errors import CareError
from care.params import DataLimits


def _rows_with_problems(n: int) -> list[dict]:
    rows = corpus_rows(n, n_turns=6, seed=3)
    rows[3]["turns"][2]["speaker"] = "therapist"
    rows[7]["client_ratings"]["4"] = 9
    rows[11]["rationales"]["2"] = "  "
    rows[15]["session_id"] = rows[2]["session_id"]  # a duplicate across chunks
    rows[18]["client_id"] = rows[0]["client_id"].upper()  # a second spelling of a client
    rows[21]["turns"][0]["time"] = "yesterday"
    return rows


def test_chunked_validation_finds_the_same_problems(tmp_path, monkeypatch):
    import care.data.validation as validation

    path = write_jsonl_file(tmp_path, _rows_with_problems(24) + ["{not json"])
    whole = [str(p) for p in validate_file(path).problems]
    assert len(whole) >= 7 and any("duplicate session id" in p for p in whole)
    runs = []
    run = validation.SessionValidator._run
    monkeypatch.setattr(validation, "CHUNK_ROWS", 7)
    monkeypatch.setattr(validation.SessionValidator, "_run", lambda self, table: (runs.append(table.name),
                                                                                   run(self, table))[1])
    assert [str(p) for p in validate_file(path).problems] == whole
    assert runs.count("turns") > 10 and runs.count("ratings") > 10 and runs.count("sessions") == 1


@pytest.mark.slow
def test_validation_holds_one_session_at_a_time(tmp_path):
    path = write_jsonl_file(tmp_path, corpus_rows(40, n_turns=6))
    alive = []

    def sessions_alive() -> int:
        gc.collect()
        return sum(isinstance(o, Session) for o in gc.get_objects())

    before = sessions_alive()  # other tests' fixtures in this process may hold some
    result = validate_file(path, observe=lambda session: alive.append(sessions_alive() - before))
    assert result.valid and result.n_sessions == 40 and result.sessions == []
    assert max(alive) <= 2, alive  # the one being validated (and at most the one before it)
    kept = validate_file(path, keep_sessions=True)
    assert [s.session_id for s in kept.sessions] == [f"s{k:05d}" for k in range(40)]


def test_stream_hashes_exactly_the_bytes_it_read(tmp_path):
    path = write_jsonl_file(tmp_path, corpus_rows(5))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes() + b"\n  \n")  # a BOM and a blank last line
    stream = JsonlStream(path)
    sessions = [line.session.session_id for line in stream]
    raw = path.read_bytes()
    assert sessions == [f"s{k:05d}" for k in range(5)]
    assert (stream.sha256, stream.n_bytes, stream.n_lines) == (hashlib.sha256(raw).hexdigest(), len(raw), 5)
    assert validate_file(path).sha256 == stream.sha256


def test_a_long_line_is_skipped_in_chunks_and_located(tmp_path, monkeypatch):
    import care.data.reader as reader

    monkeypatch.setattr(reader, "_CHUNK", 1000)
    good = json.dumps(session_dict(session_id="ok"), ensure_ascii=False)
    long = json.dumps(session_dict(session_id="big", context="长" * 30_000), ensure_ascii=False)
    path = write_jsonl_file(tmp_path, [good, long, " " * 50_000, good.replace('"ok"', '"ok2"')])
    lines = list(JsonlStream(path, DataLimits(max_line_kb=8)))
    assert [(x.line, x.session.session_id if x.session else None) for x in lines] == [(1, "ok"), (2, None), (4, "ok2")]
    (problem,) = lines[1].problems
    assert problem.field == "<line>" and f"{len(long.encode())} bytes, over the limit of 8192" in problem.message

    path.write_bytes(good.encode() + b"\n" + long.encode()[:20_000] + b"\xff" + long.encode()[20_000:] + b"\n")
    with pytest.raises(CareError, match=r":2: file is not UTF-8 \(byte offset "):
        list(JsonlStream(path, DataLimits(max_line_kb=8)))


def test_progress_bar_on_long_files(tmp_path, capsys):
    path = write_jsonl_file(tmp_path, corpus_rows(3))
    validate_file(path)  # the default: a bar only for long files on a terminal
    assert "reading sessions.jsonl" not in capsys.readouterr().err
    validate_file(path, progress=True)
    assert "reading sessions.jsonl" in capsys.readouterr().err
