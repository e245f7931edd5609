"""The JSONL reader: structural problems located by line, session and field; file-level errors raised."""

from __future__ import annotations

import pytest

from conftest import session_dict

from care.errors import CareError
from care.data.reader import read_jsonl


def test_reads_valid_sessions_with_line_numbers(tmp_path, make_session, write_jsonl):
    path = write_jsonl(tmp_path, [make_session(session_id="a"), "", "   ", make_session(session_id="b")])
    parsed = read_jsonl(path)
    assert [s.session_id for s in parsed.sessions] == ["a", "b"]
    assert parsed.lines == [1, 4]
    assert parsed.problems == []
    assert parsed.n_lines == 2
    assert parsed.sessions[0].client_ratings["7"] == 4
    assert parsed.sessions[0].turns[1].speaker == "client"


def test_schema_errors_name_line_session_and_field(tmp_path, make_session, write_jsonl):
    turns = [{"speaker": "counselor", "text": "hi"}, {"speaker": "client", "text": 5}]
    rows = [
        make_session(session_id="ok"),
        make_session(session_id="s2", client_ratings={**make_session()["client_ratings"], "7": "four"}),
        make_session(session_id="s3", turns=turns),
        make_session(session_id="s4", mood="fine"),
        {k: v for k, v in make_session(session_id="s5").items() if k != "language"},
        make_session(session_id="s6", counselor_ratings={"1": 2.5}),
        make_session(session_id="s7", client_ratings={"1": True}),
    ]
    parsed = read_jsonl(write_jsonl(tmp_path, rows), known_keys=[str(i) for i in range(1, 13)])
    assert [s.session_id for s in parsed.sessions] == ["ok"]
    got = {(p.line, p.session_id, p.field) for p in parsed.problems}
    assert got == {
        (2, "s2", "client_ratings.7"),
        (3, "s3", "turns[1].text"),
        (4, "s4", "key#9"),  # an unknown field is named by its position, never by its (input) name
        (5, "s5", "language"),
        (6, "s6", "counselor_ratings.1"),
        (7, "s7", "client_ratings.1"),
    }
    assert next(p for p in parsed.problems if p.line == 4).message == "unknown field (its name is not shown)"
    assert str(parsed.problems[0]).startswith(f"{tmp_path / 'sessions.jsonl'}:2 session=s2 field=client_ratings.7: ")
    # without the instrument's item ids, rating keys are positions too
    unknown = {p.field for p in read_jsonl(write_jsonl(tmp_path, rows)).problems if p.line in (2, 6)}
    assert unknown == {"client_ratings.key#7", "counselor_ratings.key#1"}


def test_problem_messages_never_quote_the_input(tmp_path, make_session, write_jsonl):
    marker = "MARKER_TEXT_QWXZ"
    rows = [make_session(turns=[{"speaker": "client", "text": ["list", marker]}]),
            make_session(session_id="s2", rationales={"1": {"nested": marker}}),
            make_session(session_id="s3", client_ratings={"1": marker})]
    parsed = read_jsonl(write_jsonl(tmp_path, rows))
    assert len(parsed.problems) == 3
    assert all(marker not in str(p) for p in parsed.problems)


def test_malformed_json_and_non_objects_are_line_problems(tmp_path, make_session, write_jsonl):
    rows = ['{"session_id": "x", ', make_session(session_id="fine"), "[1, 2]", '"just a string"', "{" * 100000]
    parsed = read_jsonl(write_jsonl(tmp_path, rows))
    assert [s.session_id for s in parsed.sessions] == ["fine"]
    by_line = {p.line: p for p in parsed.problems}
    assert set(by_line) == {1, 3, 4, 5}
    assert by_line[1].field == "<json>" and by_line[1].message.startswith("malformed JSON")
    assert by_line[3].message == "expected a JSON object, got list"
    assert by_line[5].session_id == "?"


def test_crlf_and_bom_are_accepted(tmp_path, make_session):
    import json

    path = tmp_path / "win.jsonl"
    body = "\r\n".join(json.dumps(make_session(session_id=f"s{i}")) for i in range(3)) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    parsed = read_jsonl(path)
    assert parsed.problems == [] and len(parsed.sessions) == 3


@pytest.mark.parametrize(
    "content, message",
    [(b"", "file is empty"), (b"\n  \n", "file is empty"), (b'{"a": 1}\n\xff\xfe\n', "file is not UTF-8")],
)
def test_file_level_errors_raise_one_line(tmp_path, content, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    with pytest.raises(CareError, match=message) as info:
        read_jsonl(path)
    assert "\n" not in str(info.value)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(CareError, match=r"f\.jsonl:2: file is not UTF-8"):
        read_jsonl(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(CareError, match="no such file"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(CareError, match="not a file"):
        read_jsonl(tmp_path)


def test_a_duplicate_json_key_is_a_located_problem_that_never_names_the_key(tmp_path):
    import json as _json

    from care.data.reader import read_jsonl

    good = _json.dumps(session_dict())
    dupe = good[:-1] + ', "client_id": "c999"}'
    nested = good.replace('"1": 4,', '"1": 4, "1": 5,', 1)
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([good, dupe, nested]) + "\n", "utf-8")
    parsed = read_jsonl(path)
    assert [p.line for p in parsed.problems] == [2, 3]
    assert all("duplicate JSON key" in p.message and "client_id" not in p.message for p in parsed.problems)
    assert len(parsed.sessions) == 1
