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
