"""The validation suite (Great Expectations) and the `care validate` command."""

from __future__ import annotations

import json
import re
import os
import stat

import pytest
import yaml

from care.errors import InvalidData
from care.data.instrument import instrument_path, load_instrument
from care.data.validation import ValidationResult, load_valid_sessions, validate_file, validate_sessions
from conftest import DROP, WAI_ITEMS, corpus_rows, session_dict

RATINGS = {i: 4 for i in WAI_ITEMS}


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _problem_keys(stderr: str) -> set[tuple[int, str, str]]:
    """(line, field, message) of each `FILE:LINE session=ID field=NAME: message` line on stderr."""
    found = (re.match(r"^.*:(\d+) session=\S* field=(\S+): (.*)$", line) for line in stderr.splitlines())
    return {(int(m[1]), m[2], m[3]) for m in found if m}


BAD_CASES = {
    "client id null": (dict(client_id=None), {("client_id", "missing client id")}),
    "client id absent": (dict(client_id=DROP), {("client_id", "missing client id")}),
    "client id blank": (dict(client_id="  "), {("client_id", "empty client id")}),
    "empty session id": (dict(session_id=" "), {("session_id", "empty session id")}),
    "client item missing": (dict(client_ratings=_without(RATINGS, "7")), {("client_ratings.7", "item not rated")}),
    "client ratings null": (dict(client_ratings=None), {("client_ratings", "missing client ratings")}),
    "client ratings empty": (dict(client_ratings={}),
                             {(f"client_ratings.{i}", "item not rated") for i in WAI_ITEMS}),
    "client extra key": (dict(client_ratings={**RATINGS, "13": 3}),
                         {("client_ratings.key#13", "not an item of the instrument")}),
    "client rating too high": (dict(client_ratings={**RATINGS, "4": 6}),
                               {("client_ratings.4", "rating outside the scale 1-5")}),
    "client rating zero": (dict(client_ratings={**RATINGS, "12": 0}),
                           {("client_ratings.12", "rating outside the scale 1-5")}),
    "client rating huge": (dict(client_ratings={**RATINGS, "1": 10**30}),
                           {("client_ratings.1", "rating outside the scale 1-5")}),
    "client rating not integer": (dict(client_ratings={**RATINGS, "2": 3.5}),
                                  {("client_ratings.2", "Input should be a valid integer")}),
    "counselor rating off scale": (dict(counselor_ratings={**RATINGS, "9": -1}),
                                   {("counselor_ratings.9", "rating outside the scale 1-5")}),
    "counselor item missing": (dict(counselor_ratings=_without(RATINGS, "3")),
                               {("counselor_ratings.3", "item not rated")}),
    "counselor extra key": (dict(counselor_ratings={**RATINGS, "x": 1}),
                            {("counselor_ratings.key#13", "not an item of the instrument")}),
    "rationale missing": (dict(rationales=_without(session_dict()["rationales"], "4")),
                          {("rationales.4", "no rationale for this item")}),
    "rationale blank": (dict(rationales={**session_dict()["rationales"], "5": " \n "}),
                        {("rationales.5", "empty rationale")}),
    "rationale extra": (dict(rationales={**session_dict()["rationales"], "0": "x"}),
                        {("rationales.key#13", "not an item of the instrument")}),
    "no turns": (dict(turns=[]), {("turns", "no turns")}),
    "turns absent": (dict(turns=DROP), {("turns", "no turns")}),
    "bad speaker": (dict(turns=[{"speaker": "counselor", "text": "a"}, {"speaker": "client", "text": "b"},
                                {"speaker": "therapist", "text": "c"}]),
                    {("turns[2].speaker", "speaker must be one of: counselor, client")}),
    "only counselor": (dict(turns=[{"speaker": "counselor", "text": "a"}]), {("turns", "no client turn")}),
    "only client": (dict(turns=[{"speaker": "client", "text": "a"}] * 2), {("turns", "no counselor turn")}),
    "blank text": (dict(turns=[{"speaker": "counselor", "text": "a"}, {"speaker": "client", "text": " \t"}]),
                   {("turns[1].text", "empty text")}),
    "unknown language": (dict(language="fr"), {("language", "unknown language (the instrument has: zh, en)")}),
    "unknown field": (dict(mood="ok"), {("key#9", "unknown field (its name is not shown)")}),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_case_exits_1_with_exactly_its_problems(case, tmp_path, write_jsonl, run_cli):
    overrides, expected = BAD_CASES[case]
    path = write_jsonl(tmp_path, [session_dict(session_id="good"), session_dict(**{"session_id": "bad", **overrides})])
    expected_line = 2
    result = run_cli("validate", path)
    assert result.exit_code == 1, result.output
    assert _problem_keys(result.stderr) == {(expected_line, f, m) for f, m in expected}
    assert result.stderr.strip().splitlines()[-1] == f"{path}: {len(expected)} problem(s) in 2 line(s)"
    assert "Traceback" not in result.output


def test_valid_file_exits_0(tmp_path, write_jsonl, run_cli):
    rows = corpus_rows(20) + [session_dict(session_id="nulls", counselor_ratings=None, rationales=None,
                                           counselor_id=None, language="en")]
    path = write_jsonl(tmp_path, rows)
    result = run_cli("validate", path, "--instrument", "wai-sr")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{path}: 21 sessions valid"
    assert result.stderr == ""


def test_duplicate_session_ids_point_at_each_other(tmp_path, write_jsonl, run_cli):
    rows = [session_dict(session_id="a"), session_dict(session_id="b"), session_dict(session_id="a")]
    rows += [session_dict(session_id="d")] * 5
    result = run_cli("validate", write_jsonl(tmp_path, rows))
    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if "field=session_id" in line]
    assert len(problems) == 7
    assert problems[0].endswith(":1 session=a field=session_id: duplicate session id (also on line 3)")
    assert problems[1].endswith(":3 session=a field=session_id: duplicate session id (also on line 1)")
    assert problems[2].endswith(":4 session=d field=session_id: duplicate session id (also on line 5, 6, 7 and 1 more)")


def test_all_problems_reported_sorted_by_line(tmp_path, write_jsonl, run_cli):
    rows = [
        session_dict(session_id="s1", language="xx", client_ratings={**RATINGS, "2": 9}),
        '{"session_id": "broken"',
        session_dict(session_id="s3", turns=[], client_id=None),
        session_dict(session_id="s4"),
        session_dict(session_id="s5", rationales={"1": ""}, counselor_ratings={"1": 7}),
    ]
    path = write_jsonl(tmp_path, rows)
    result = validate_file(path, keep_sessions=True)
    assert isinstance(result, ValidationResult)
    assert result.n_lines == 5 and result.n_sessions == 4 and result.lines == [1, 3, 4, 5]
    assert [p.line for p in result.problems] == sorted(p.line for p in result.problems)
    assert len([p for p in result.problems if p.line == 1]) == 2
    assert len([p for p in result.problems if p.line == 3]) == 2
    # s5: 11 counselor items unrated + 1 off scale, 11 rationales missing + 1 empty
    assert len([p for p in result.problems if p.line == 5]) == 24
    fields5 = [p.field for p in result.problems if p.line == 5]
    assert fields5[:3] == ["counselor_ratings.1", "counselor_ratings.2", "counselor_ratings.3"]
    assert len(result.problems) == 2 + 1 + 2 + 24
    cli = run_cli("validate", path)
    assert cli.exit_code == 1
    assert cli.stderr.splitlines()[:-1] == [str(p) for p in result.problems]
    assert cli.stderr.splitlines()[2].startswith(f"{path}:2 session=? field=<json>: malformed JSON")


def test_structural_and_rule_problems_share_the_format(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path, [session_dict(session_id="x", turns=[{"speaker": 1, "text": "a"}]),
                                  session_dict(session_id="y", language="de")])
    problems = [str(p) for p in validate_file(path).problems]
    assert problems == [f"{path}:1 session=x field=turns[0].speaker: Input should be a valid string",
                        f"{path}:2 session=y field=language: unknown language (the instrument has: zh, en)"]


def test_report_has_counts_and_problems_but_no_text(tmp_path, write_jsonl, run_cli):
    markers = {k: f"ZZMARK{k.upper()}QQ" for k in ("turn", "rationale", "context", "speaker", "badrat", "badturn")}
    rows = corpus_rows(3)
    rows[0]["turns"][1]["text"] = markers["turn"]
    rows[0]["rationales"]["3"] = markers["rationale"]
    rows[0]["context"] = markers["context"]
    rows[1]["turns"][2]["speaker"] = markers["speaker"]  # a bad speaker: GE sees it, nothing may echo it
    rows[1]["turns"][3]["text"] = markers["badturn"]
    rows[2]["rationales"]["1"] = ["not", markers["badrat"]]  # structural problem
    rows[2]["client_ratings"]["1"] = 9
    report = tmp_path / "out" / "report.json"
    result = run_cli("validate", write_jsonl(tmp_path, rows), "--report", report)
    assert result.exit_code == 1
    text = report.read_text("utf-8")
    for marker in markers.values():
        assert marker not in text
        assert marker not in result.output
    assert "咨询师" not in text and "来访者" not in text  # no corpus text at all
    data = json.loads(text)
    assert data["valid"] is False
    assert data["n_lines"] == 3 and data["n_sessions"] == 2 and data["n_problems"] == 2
    assert data["instrument"] == "wai-sr"
    assert {(p["line"], p["field"]) for p in data["problems"]} == {(2, "turns[2].speaker"), (3, "rationales.1")}
    assert set(data["problems"][0]) == {"line", "session_id", "field", "message"}
    assert stat.S_IMODE(os.stat(report).st_mode) == 0o600
    assert not [p for p in report.parent.iterdir() if p.name != "report.json"]  # no temp files left


def test_report_of_a_valid_file(tmp_path, write_jsonl, run_cli):
    report = tmp_path / "report.json"
    result = run_cli("validate", write_jsonl(tmp_path, corpus_rows(4)), "--report", report)
    assert result.exit_code == 0
    data = json.loads(report.read_text("utf-8"))
    assert data["valid"] is True and data["n_sessions"] == 4 and data["problems"] == []


@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b'{"session_id": "s1"}\n\xc3\x28\n', "file is not UTF-8"),
])
def test_file_level_errors_are_one_line(tmp_path, run_cli, content, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(content)
    report = tmp_path / "report.json"
    report.write_text('{"valid": true}')  # a stale report must not survive
    result = run_cli("validate", path, "--report", report)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert json.loads(report.read_text())["valid"] is False


def test_missing_path_is_one_line(tmp_path, run_cli):
    result = run_cli("validate", tmp_path / "absent.jsonl")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'absent.jsonl'}: no such file"


def test_malformed_json_is_one_line_per_bad_line(tmp_path, run_cli):
    path = tmp_path / "f.jsonl"
    path.write_text('{"session_id": \n', encoding="utf-8")
    result = run_cli("validate", path)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{path}:1 session=? field=<json>: malformed JSON")
    assert lines[1] == f"{path}: 1 problem(s) in 1 line(s)"
    assert "Traceback" not in result.output


def test_missing_instrument_is_one_line(tmp_path, write_jsonl, run_cli):
    result = run_cli("validate", write_jsonl(tmp_path, [session_dict()]), "--instrument", tmp_path / "no.yaml")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "instrument file not found" in result.stderr


@pytest.mark.parametrize("args", [["validate"], ["validate", "x.jsonl", "--bogus"], ["validate", "a", "b"]])
def test_usage_errors_exit_2(run_cli, args):
    assert run_cli(*args).exit_code == 2


def test_console_script_errors_without_traceback(tmp_path):
    """The real entry point (a fresh process): a file-level error is one line, before GE is imported."""
    import subprocess
    import sys

    for path in (tmp_path / "absent.jsonl", tmp_path / "empty.jsonl"):
        if path.name == "empty.jsonl":
            path.write_text("\n")
        proc = subprocess.run([sys.executable, "-m", "care_cli.main", "validate", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1
        assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_ratings_not_required_for_new_transcripts(tmp_path, write_jsonl):
    rows = [session_dict(session_id="a", client_ratings=None, rationales=None, counselor_ratings=None),
            session_dict(session_id="b", client_ratings=DROP),
            session_dict(session_id="c", client_ratings={"1": 3}),
            session_dict(session_id="d", client_ratings={**RATINGS, "5": 8})]
    path = write_jsonl(tmp_path, rows)
    problems = validate_file(path, ratings_required=False).problems
    assert {(p.session_id, p.field) for p in problems} == (
        {("c", f"client_ratings.{i}") for i in WAI_ITEMS if i != "1"} | {("d", "client_ratings.5")})
    strict = validate_file(path).problems
    assert {(p.session_id, p.field) for p in strict if p.field == "client_ratings"} == {("a", "client_ratings"),
                                                                                        ("b", "client_ratings")}


def test_validate_sessions_returns_rule_problems_only(tmp_path, write_jsonl):
    from care.data.reader import read_jsonl

    path = write_jsonl(tmp_path, ["{oops", session_dict(language="fr")])
    parsed = read_jsonl(path)
    problems = validate_sessions(parsed, load_instrument())
    assert [(p.line, p.field) for p in problems] == [(2, "language")]
    assert [(p.line, p.field) for p in parsed.problems] == [(1, "<json>")]


def test_load_valid_sessions(tmp_path, write_jsonl):
    good = write_jsonl(tmp_path, corpus_rows(6), name="good.jsonl")
    sessions = load_valid_sessions(good)
    assert [s.session_id for s in sessions] == [f"s{k:05d}" for k in range(6)]
    bad = write_jsonl(tmp_path, [session_dict(session_id="x", language="fr", client_id=""), "[]"], name="bad.jsonl")
    with pytest.raises(InvalidData) as info:
        load_valid_sessions(bad)
    assert [(p.line, p.field) for p in info.value.problems] == [(1, "client_id"), (1, "language"), (2, "<line>")]
    assert str(info.value).count("\n") == 2
    new = write_jsonl(tmp_path, [session_dict(client_ratings=None)], name="new.jsonl")
    assert len(load_valid_sessions(new, ratings_required=False)) == 1


def test_custom_instrument_defines_items_scale_and_languages(tmp_path, write_jsonl, run_cli):
    data = {
        "name": "seeker",
        "languages": ["en"],
        "scale": {"min": 1, "max": 3, "labels": {i: {"en": f"level {i}"} for i in range(1, 4)}},
        "dimensions": ["empathy", "relevance"],
        "items": [
            {"id": "empathy", "dimension": "empathy", "text": {"en": "The helper understood me."}},
            {"id": "relevance", "dimension": "relevance", "text": {"en": "The talk stayed on my problem."}},
        ],
    }
    inst_file = tmp_path / "seeker.yaml"
    inst_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    ok = {"empathy": 3, "relevance": 1}
    rows = [
        session_dict(session_id="a", language="en", client_ratings=ok, counselor_ratings=None, rationales=None),
        session_dict(session_id="b", language="zh", client_ratings={"empathy": 4, "7": 1},
                     counselor_ratings=None, rationales={"empathy": "x", "relevance": "y"}),
    ]
    path = write_jsonl(tmp_path, rows)
    problems = validate_file(path, instrument=inst_file).problems
    assert [(p.line, p.field, p.message) for p in problems] == [
        (2, "client_ratings.empathy", "rating outside the scale 1-3"),
        (2, "client_ratings.key#2", "not an item of the instrument"),  # an unknown key: by position
        (2, "client_ratings.relevance", "item not rated"),
        (2, "language", "unknown language (the instrument has: en)"),
    ]
    assert validate_file(path, instrument=load_instrument(inst_file)).problems == problems
    result = run_cli("validate", path, "--instrument", inst_file)
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 5


def test_instrument_argument_forms(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path, [session_dict()])
    for ref in (None, "wai-sr", instrument_path("wai-sr"), str(instrument_path("wai-sr")), load_instrument()):
        assert validate_file(path, instrument=ref).problems == []


def test_ge_never_sees_text(tmp_path, write_jsonl, monkeypatch):
    """The flattened tables hold lengths, never transcript or rationale text."""
    import care.data.validation as v

    rows = [session_dict(turns=[{"speaker": "counselor", "text": "ZZSEEN1"}, {"speaker": "client", "text": "ZZSEEN2"}],
                         rationales={i: "ZZSEEN3" for i in WAI_ITEMS}, context="ZZSEEN4")]
    seen = []
    original = v._frame
    monkeypatch.setattr(v, "_frame", lambda table: seen.append(original(table)) or seen[-1])
    assert validate_file(write_jsonl(tmp_path, rows)).problems == []
    assert {len(seen)} == {4}
    for df in seen:
        assert "ZZSEEN" not in df.to_csv()


def test_odd_ids_and_keys_stay_on_one_line(tmp_path, write_jsonl):
    rows = [session_dict(session_id="a\nb" + "x" * 200, language="fr"),
            session_dict(session_id="c", client_ratings={**RATINGS, "k\ney": 1}),
            session_dict(session_id="d", counselor_ratings={**RATINGS, "7": "x\ny"})]
    problems = validate_file(write_jsonl(tmp_path, rows)).problems
    assert len(problems) == 3
    assert all("\n" not in str(p) for p in problems)
    assert problems[0].session_id == "a?b" + "x" * 77 + "..."
    assert problems[1].field == "client_ratings.key#13"  # an unknown key is never echoed
    assert problems[2].field == "counselor_ratings.7"
