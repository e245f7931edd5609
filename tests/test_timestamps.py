"""Turn times (optional, ISO 8601): kept, validated with located problems (parseable, one kind, never going back,
within a day of the session's first time), summarised in the validation report as numbers only; a file
without times serializes byte for byte as before."""

from __future__ import annotations

import json

from conftest import session_dict, write_jsonl_file

from care.data.reader import read_jsonl
from care.data.schema import Session
from care.data.timestamps import time_features
from care.data.validation import validate_file


def _timed(sid: str, times: list[str | None]) -> dict:
    row = session_dict(session_id=sid, client_id=f"c-{sid}")
    row["turns"] = [dict(t, **({} if when is None else {"time": when})) for t, when in zip(row["turns"], times)]
    return row


def test_times_are_kept_checked_and_located(tmp_path):
    rows = [
        session_dict(session_id="none"),
        _timed("ok", ["2024-05-01T10:00:00+09:00", "2024-05-01T10:01:30+09:00", None, "2024-05-01T10:02:00+09:00"]),
        _timed("zulu", ["2024-05-01T10:00:00Z", "2024-05-01T10:00:20Z", "2024-05-01T10:00:50Z", "2024-05-01T10:01:00Z"]),
        _timed("bad", ["yesterday", "2024-05-01T10:05:00", "2024-05-01T10:04:00", "2024-05-03T10:04:00"]),
        _timed("mixed", ["2024-05-01T10:05:00Z", "2024-05-01T10:06:00", None, None]),
        _timed("late", ["2024-05-01T23:59:00+00:00", "2024-05-02T01:00:00+01:00", None, None]),  # 60 s later: fine
    ]
    path = write_jsonl_file(tmp_path, rows)
    result = validate_file(path, report_path=tmp_path / "report.json", keep_sessions=True)
    assert [(p.line, p.session_id, p.field, p.message) for p in result.problems] == [
        (4, "bad", "turns[0].time", "not an ISO 8601 time (e.g. 2024-05-01T14:03:12+09:00)"),
        (4, "bad", "turns[2].time", "earlier than the previous turn's time (times must not go back)"),
        (4, "bad", "turns[3].time", "more than 24 hours after the session's first time"),
        (5, "mixed", "turns[1].time", "times with and without a UTC offset are mixed in this session"),
    ]
    ok = result.sessions[1]
    assert [t.time for t in ok.turns] == ["2024-05-01T10:00:00+09:00", "2024-05-01T10:01:30+09:00", None,
                                          "2024-05-01T10:02:00+09:00"]
    assert time_features(ok) == {"span_s": 120.0, "client_reply_s": 90.0, "counselor_reply_s": None}
    assert time_features(result.sessions[0]) is None
    report = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert report["timestamps"]["sessions_with_times"] == 5 and report["timestamps"]["median_client_reply_s"] is not None
    assert "yesterday" not in (tmp_path / "report.json").read_text("utf-8")


def test_a_file_without_times_keeps_its_bytes(tmp_path):
    rows = [session_dict(session_id="a"), _timed("b", ["2024-05-01T10:00:00", None, None, None])]
    path = write_jsonl_file(tmp_path, rows)
    sessions = read_jsonl(path).sessions
    lines = [s.to_json() for s in sessions]
    assert '"time"' not in lines[0] and lines[1].count('"time"') == 1
    assert [Session.model_validate_json(line) for line in lines] == sessions
