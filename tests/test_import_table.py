"""`care import table PATH --map MAPPING.yaml --out DIR`: the three shapes (a turns CSV + a ratings CSV, one JSON
file per session, JSONL), what is skipped and why (counts and located reasons, never text), byte-identical
re-imports, located mapping errors, and an --out that is not ours left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from care.data.importers.table import import_table, write_import
from care.data.validation import validate_file
from care.errors import CareError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "ja-alliance"


def test_the_readme_example_imports_validates_and_reimports_byte_identically(run_cli, tmp_path):
    result = run_cli("import", "table", EXAMPLE / "data", "--map", EXAMPLE / "mapping.yaml", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "wrote 3 of 4 session(s)" in result.stdout
    assert "turns.csv:23 session=ja0003 field=client_ratings.7: rating outside the scale 0-5" in result.stderr
    assert "skipped sessions: invalid 1; dropped turns: ignored_speaker 3" in result.stderr
    texts = {line.split(",")[3] for line in (EXAMPLE / "data" / "turns.csv").read_text("utf-8").splitlines()[1:]}
    report_text = (tmp_path / "a" / "import.json").read_text("utf-8")
    assert not any(t in result.output or t in report_text for t in texts)  # never transcript text
    report = json.loads(report_text)
    assert report["skipped"]["invalid"] == 1 and report["timestamps"]["sessions_with_times"] == 3
    assert validate_file(tmp_path / "a" / "sessions.jsonl", EXAMPLE / "instrument.yaml").valid
    first = json.loads((tmp_path / "a" / "sessions.jsonl").read_text("utf-8").splitlines()[0])
    assert first["turns"][1]["time"] == "2024-05-01T19:02:40+09:00" and first["language"] == "ja"
    assert run_cli("import", "table", EXAMPLE / "data", "--map", EXAMPLE / "mapping.yaml", "--out",
                   tmp_path / "b").exit_code == 0
    for name in ("sessions.jsonl", "import.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = run_cli("import", "table", EXAMPLE / "data", "--map", EXAMPLE / "mapping.yaml", "--out", tmp_path / "a")
    assert again.exit_code == 0  # an earlier import is replaced as a whole


def test_an_out_dir_that_is_not_ours_is_refused_and_left_alone(run_cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sessions.jsonl").write_text("my own file\n", "utf-8")
    result = run_cli("import", "table", EXAMPLE / "data", "--map", EXAMPLE / "mapping.yaml", "--out", mine)
    assert result.exit_code == 1 and "refusing to write into it" in result.output
    assert [p.name for p in mine.iterdir()] == ["sessions.jsonl"] and "my own" in (mine / "sessions.jsonl").read_text()
    (tmp_path / "file").write_text("x", "utf-8")
    assert run_cli("import", "table", EXAMPLE / "data", "--map", EXAMPLE / "mapping.yaml", "--out",
                   tmp_path / "file").exit_code == 1


JSON_MAPPING = {
    "format": "jsonl", "instrument": "esconv-seeker", "language": "en",
    "session": {"id": "meta.id", "client_id": "meta.client", "counselor_id": "meta.helper", "context": "intake"},
    "turns": {"path": "dialogue", "speaker": "who", "text": "says", "time": "at"},
    "speakers": {"counselor": ["T", 1], "client": ["C"], "ignore": ["bot"]},
    "client_ratings": {"empathy": "survey.empathy", "relevance": "survey.relevance"},
    "helper_ratings": {"supporter_detail": "survey.helper"},
}


def _record(sid, client=7, empathy=4, relevance="5", speakers=("T", "C"), texts=("How are you?", "Tired.")) -> dict:
    dialogue = [{"who": w, "says": t, "at": f"2024-05-01T10:0{i}:00"} for i, (w, t) in enumerate(zip(speakers, texts))]
    return {"meta": {"id": sid, "client": client, "helper": "h1"}, "intake": "a hard week",
            "dialogue": dialogue + [{"who": "bot", "says": "(saved)"}, {"who": "C", "says": "  "}],
            "survey": {"empathy": empathy, "relevance": relevance, "helper": 3}}


RECORDS = [
    _record("a1"),
    _record(2),  # an integer id becomes "2"
    _record("a3", speakers=("T", "X")),  # unknown speaker value: skipped
    _record("a4", empathy=4.5),  # not an integer: skipped
    _record("a5", relevance=None),  # a rating missing: skipped
    _record("a1"),  # the id again: skipped
    _record("a7", empathy=9),  # off the 1-5 scale: validation skips it
    ["not", "an", "object"],
    _record("a9", speakers=(1, "C")),  # speaker values compare as strings
]


def _mapping(tmp_path, **changes) -> Path:
    doc = {**JSON_MAPPING, **changes}
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    return path


def test_jsonl_and_json_dir_shapes_map_and_skip_with_located_reasons(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + "{broken\n", "utf-8")
    report = write_import(src, _mapping(tmp_path), tmp_path / "out")
    assert (report["read"], report["written"]) == (10, 3)
    assert {k: v for k, v in report["skipped"].items() if v} == {
        "unknown_speaker": 1, "not_an_integer": 1, "incomplete_ratings": 1, "duplicate_session_id": 1, "invalid": 1,
        "malformed": 2}
    assert report["dropped_turns"] == {"empty_text": 3, "ignored_speaker": 3}  # of the sessions written
    where = {(p["source"], p["session_id"], p["field"]) for p in report["problems"]}
    assert {("in.jsonl:3", "a3", "turns[1].speaker"), ("in.jsonl:4", "a4", "client_ratings.empathy"),
            ("in.jsonl:5", "a5", "client_ratings.relevance"), ("in.jsonl:6", "a1", "session_id"),
            ("in.jsonl:7", "a7", "client_ratings.empathy"), ("in.jsonl:8", "?", "<record>"),
            ("in.jsonl:10", "?", "<json>")} == where
    lines = (tmp_path / "out" / "sessions.jsonl").read_text("utf-8").splitlines()
    first = json.loads(lines[0])
    assert first == {"session_id": "a1", "client_id": "7", "counselor_id": "h1", "language": "en",
                     "context": "a hard week",
                     "turns": [{"speaker": "counselor", "text": "How are you?", "time": "2024-05-01T10:00:00"},
                               {"speaker": "client", "text": "Tired.", "time": "2024-05-01T10:01:00"}],
                     "client_ratings": {"empathy": 4, "relevance": 5}, "counselor_ratings": None, "rationales": None,
                     "helper_ratings": {"supporter_detail": 3}}
    assert [json.loads(line)["session_id"] for line in lines] == ["a1", "2", "a9"]
    # the same sessions from one JSON file per session
    folder = tmp_path / "dir"
    folder.mkdir()
    for k, r in enumerate(RECORDS):
        (folder / f"{k:02d}.json").write_text(json.dumps(r), "utf-8")
    result, *_ = import_table(folder, _mapping(tmp_path, format="json_dir"))
    assert [s.to_json() for s in result.sessions] == lines
    assert any(p["source"] == "02.json" and p["field"] == "turns[1].speaker" for p in result.problems)


def test_unrated_sessions_can_be_imported_for_scoring(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [_record("a1"), _record("a2", empathy=None, relevance=None), _record("a3", relevance=None)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    result, *_ = import_table(src, _mapping(tmp_path, ratings_required=False))
    assert [s.session_id for s in result.sessions] == ["a1", "a2"] and result.sessions[1].client_ratings is None
    assert result.skipped["incomplete_ratings"] == 1  # some items but not all: never half a rating set


@pytest.mark.parametrize("changes, message", [
    ({"language": None}, "field=<root>: Value error, give exactly one of language"),
    ({"colour": "red"}, "field=colour: unknown field"),
    ({"client_ratings": "q"}, "field=client_ratings: Value error, a pattern must contain {item}"),
    ({"client_ratings": {"empathy": "e", "warmth": "w", "relevance": "r"}}, "field=client_ratings: 'warmth' is not an item"),
    ({"client_ratings": {"empathy": "e"}}, "field=client_ratings: maps no field for item\\(s\\) relevance"),
    ({"speakers": {"counselor": ["T"], "client": ["T"]}}, "speaker value 'T' is listed under both counselor and client"),
    ({"format": "csv"}, "turns.path is for the JSON shapes"),
])
def test_mapping_problems_are_one_located_line(tmp_path, changes, message):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(_record("a1")) + "\n", "utf-8")
    with pytest.raises(CareError, match=message) as info:
        import_table(src, _mapping(tmp_path, **changes))
    assert "\n" not in str(info.value) and str(tmp_path / "mapping.yaml") in str(info.value)


def test_a_csv_without_a_mapped_column_is_refused_by_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("turns.csv", "ratings.csv"):
        (data / name).write_bytes((EXAMPLE / "data" / name).read_bytes())
    doc = yaml.safe_load((EXAMPLE / "mapping.yaml").read_text("utf-8"))
    doc["instrument"] = str(EXAMPLE / "instrument.yaml")
    doc["turns"]["speaker"] = "speaker"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    with pytest.raises(CareError, match=r"turns.csv: no column 'speaker' \(named in the mapping\)"):
        import_table(data, tmp_path / "m.yaml")
    doc["turns"]["speaker"] = "role"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    with pytest.raises(CareError, match="no session imported"):  # every rating row refers to the wrong ids
        (data / "ratings.csv").write_text((data / "ratings.csv").read_text("utf-8").replace("ja0", "zz0"), "utf-8")
        write_import(data, tmp_path / "m.yaml", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ records Python would guess on


def _raw_line(record: dict, **raw: str) -> str:
    """`record` as a JSON line, each `raw` key's placeholder replaced by literal JSON (numbers JSON can't hold)."""
    line = json.dumps(record)
    for key, literal in raw.items():
        line = line.replace(f'"@{key}@"', literal, 1)
    return line


def test_json_records_are_never_guessed_at_but_skipped_with_their_location(tmp_path):
    both = _record("x10")
    both["meta.id"] = "other"  # a key that is also the dotted path meta.id
    why = _record("x11")
    why["why"] = {"e": 5, "r": "the client says so"}
    lines = [
        json.dumps(_record("x0")),
        _raw_line(_record("x1", empathy="@e@"), e="9" * 5000),
        _raw_line(_record("x2", relevance="@r@"), r="NaN"),
        _raw_line(_record("x3", client="@c@"), c="1e999"),
        json.dumps(_record("x4"))[:-1] + ', "survey": {"empathy": 1, "relevance": 1}}',
        json.dumps(_record("x5", empathy=4.0)),
        json.dumps(_record(True)),
        json.dumps(_record(1.5)),
        json.dumps(_record("x8", speakers=({"who": "T"}, "C"))),
        json.dumps({**_record("x9"), "intake": 5}),
        json.dumps(both),
        json.dumps(why),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\ufeff" + "\n".join(lines) + "\n", "utf-8")  # a byte-order mark first: read past
    mapping = _mapping(tmp_path, rationales={"empathy": "why.e", "relevance": "why.r"})
    result, *_ = import_table(src, mapping)
    assert [s.session_id for s in result.sessions] == ["x0"]
    got = {(p["source"], p["session_id"], p["field"], p["message"].split(" (")[0].split(",")[0])
           for p in result.problems}
    assert got == {
        ("in.jsonl:2", "?", "survey.empathy", "number of 5000 digits"),
        ("in.jsonl:3", "?", "survey.relevance", "NaN is not JSON"),
        ("in.jsonl:4", "?", "meta.client", "number outside the range of a float"),
        ("in.jsonl:5", "?", "<json>", "duplicate JSON key"),
        ("in.jsonl:6", "x5", "client_ratings.empathy", "not an integer"),
        ("in.jsonl:7", "?", "session_id", "not a string"),
        ("in.jsonl:8", "?", "session_id", "not a string"),
        ("in.jsonl:9", "x8", "turns[0].speaker", "not a string"),
        ("in.jsonl:10", "x9", "context", "not a string"),
        ("in.jsonl:11", "?", "meta.id", "both a key with this name and a nested path of it: which one is meant is "
                                        "ambiguous"),
        ("in.jsonl:12", "x11", "rationales.empathy", "not a string"),
    }
    assert result.skipped["malformed"] == 10 and result.skipped["not_an_integer"] == 1
    assert "the client says so" not in json.dumps(result.problems)
    folder = tmp_path / "dir"
    folder.mkdir()
    for k, line in enumerate(lines[:2]):
        (folder / f"{k:02d}.json").write_text("\ufeff" + line, "utf-8")
    result, *_ = import_table(folder, _mapping(tmp_path, format="json_dir"))
    assert [s.session_id for s in result.sessions] == ["x0"]
    assert [(p["source"], p["field"]) for p in result.problems] == [("01.json", "survey.empathy")]


def _csv_copy(tmp_path: Path, name: str = "data") -> Path:
    data = tmp_path / name
    data.mkdir()
    for f in ("turns.csv", "ratings.csv"):
        (data / f).write_bytes((EXAMPLE / "data" / f).read_bytes())
    doc = yaml.safe_load((EXAMPLE / "mapping.yaml").read_text("utf-8"))
    doc["instrument"] = str(EXAMPLE / "instrument.yaml")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    return data


def _edit_csv(path: Path, line: int, column: str, value: str) -> None:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(path.read_text("utf-8"), newline="")))
    rows[line - 1][rows[0].index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue(), "utf-8")


def test_csv_fields_over_the_csv_default_import_and_over_the_limit_skip_their_session(tmp_path):
    from care.params import DataLimits

    data = _csv_copy(tmp_path)
    before, *_ = import_table(data, tmp_path / "m.yaml")
    long = "長い発言です。" * 30_000  # 210,000 characters: over csv's default field limit of 131,072
    _edit_csv(data / "turns.csv", 4, "text", long)
    result, *_ = import_table(data, tmp_path / "m.yaml")
    assert [s.session_id for s in result.sessions] == [s.session_id for s in before.sessions]
    assert any(t.text == long for s in result.sessions for t in s.turns)
    result, *_ = import_table(data, tmp_path / "m.yaml", limits=DataLimits(max_text_chars=200_000))
    assert [s.session_id for s in result.sessions] == [s.session_id for s in before.sessions][1:]
    assert result.skipped["over_limit"] == 1
    assert [(p["source"], p["session_id"], p["field"]) for p in result.problems][0] == ("turns.csv:4", "ja0000", "text")
    assert "210000 characters, over the limit of 200000" in result.problems[0]["message"]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide default is restored


def test_a_csv_header_with_a_column_twice_is_refused_by_name(tmp_path):
    data = _csv_copy(tmp_path)
    text = (data / "ratings.csv").read_text("utf-8").split("\n", 1)
    (data / "ratings.csv").write_text(text[0].replace(",q20", ",q7") + "\n" + text[1], "utf-8")
    with pytest.raises(CareError) as info:
        import_table(data, tmp_path / "m.yaml")
    assert str(info.value) == (f"{data / 'ratings.csv'}:1: column 'q7' appears 2 times in the header; which one "
                               "counts is ambiguous: rename or remove the others")


@pytest.mark.parametrize("order", ["1_0", "٣", "2"])  # int() reads the first two; the last repeats a number
def test_csv_turn_order_is_digits_and_never_repeats(tmp_path, order):
    data = _csv_copy(tmp_path)
    _edit_csv(data / "turns.csv", 2, "turn", order)  # ja0000's first turn row (its turns are 0, 1, 2, ...)
    result, *_ = import_table(data, tmp_path / "m.yaml")
    assert "ja0000" not in [s.session_id for s in result.sessions]
    assert [(p["source"], p["field"]) for p in result.problems if p["session_id"] == "ja0000"] == [("turns.csv:2", "turn")]
