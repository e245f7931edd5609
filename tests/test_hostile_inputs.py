"""Hostile inputs: `care validate`, `care annotations add` and `care score` never crash, never leave a partial
file and never change the data, whatever the JSONL (or instrument YAML) holds.

Property-based (hypothesis) over the JSONL reader and the three commands, run in-process: random bytes,
truncated lines, wrong types, huge and deeply nested JSON (100000 levels), numbers over Python's digit
limit, lone-surrogate escapes, control / right-to-left / combining characters, a 1 MB utterance, and
instrument YAML with missing, duplicate or malformed items. For every input:

- exit 0, or exit 1/2 with either one line `error: ...` or one located line per problem
  (`FILE:LINE session=ID field=F: ...`) and a summary line; never an uncaught exception (a traceback);
- no partial output: `care score --out F` writes one JSON line per input session or no file at all;
  `care validate --report F` leaves no file or a complete JSON report; no temporary file is left beside them;
- `care annotations add` that refuses leaves every byte of `data/` and `data.dvc` as it was, and one that
  accepts appends exactly the canonical lines (text round-trips byte for byte);
- no transcript or rationale text appears in any message.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from conftest import WAI_ITEMS, session_dict
from test_intake import _snapshot, template_repo  # noqa: F401  (module-scoped fixture: a git + DVC repo)
from test_release import build_tiny_release

pytestmark = pytest.mark.timeout(300)

SECRET = "SECRET-TEXT-4471"  # planted in every turn, context and rationale: must never reach a message
MB_TEXT = ("来访者说" + SECRET + " the client said ") * (1_000_000 // 40)  # about 1 MB of UTF-8 in one turn

SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

PROBLEM_LINE = re.compile(r"^.+:\d+ session=.* field=.+: .+$")
SUMMARY_LINE = re.compile(r": \d+ problem\(s\)")


# ------------------------------------------------------------------------------------------ strategies

# Right-to-left, bidi controls, combining marks, C0/C1 controls, separators, BOM, astral characters.
WEIRD = ["\u202e", "\u202c", "\u200f", "\u2067", "\u0301", "\u0338", "\u20dd", "\u05e9\u05dc\u05d5\u05dd",
         "\u0645\u0631\u062d\u0628\u0627", "\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\x1c", "\u2028", "\u2029",
         "\r", "\t", "\ufeff", "\U0001f600", "e\u0301\u0301\u0301", "\uffff", "\U0010ffff"]
weird_text = st.lists(st.one_of(st.sampled_from(WEIRD), st.text(max_size=6)), max_size=5).map("".join)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), weird_text,
                         st.sampled_from([0, -1, 6, 2**63, -(2**70), 1.5, 4.0]))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(weird_text, c, max_size=3),
                           max_leaves=8)
FIELDS = ["session_id", "client_id", "counselor_id", "language", "context", "turns", "client_ratings",
          "counselor_ratings", "rationales", "helper_ratings"]


def base_session(k: int) -> dict:
    row = session_dict(session_id=f"h{k}", client_id=f"hc{k}", context=f"背景 {SECRET}")
    row["turns"] = [{"speaker": t["speaker"], "text": t["text"] + SECRET} for t in row["turns"]]
    row["rationales"] = {i: f"{SECRET} 依据 {i}" for i in WAI_ITEMS}
    return row


@st.composite
def mutated_session(draw, k: int) -> dict:
    """A valid session, then 0-3 mutations: wrong types, unknown fields, weird text, odd ratings."""
    row = base_session(k)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "drop", "unknown", "turn", "speaker", "rating", "rating_key",
                                     "weird_text", "weird_id"]))
        if kind == "field":
            row[draw(st.sampled_from(FIELDS))] = draw(json_values)
        elif kind == "drop":
            row.pop(draw(st.sampled_from(FIELDS)), None)
        elif kind == "unknown":
            row[draw(weird_text)] = draw(json_values)
        elif kind == "turn" and isinstance(row.get("turns"), list) and row["turns"]:
            row["turns"][draw(st.integers(0, len(row["turns"]) - 1))] = draw(json_values)
        elif kind == "speaker" and isinstance(row.get("turns"), list) and row["turns"]:
            turn = row["turns"][draw(st.integers(0, len(row["turns"]) - 1))]
            if isinstance(turn, dict):
                turn["speaker"] = draw(st.sampled_from(["client", "counselor", "Client", "therapist", "", " "]))
        elif kind in ("rating", "rating_key") and isinstance(row.get("client_ratings"), dict):
            key = draw(st.sampled_from(WAI_ITEMS)) if kind == "rating" else draw(weird_text)
            row["client_ratings"][key] = draw(st.one_of(st.integers(-3, 9), json_scalars))
        elif kind == "weird_text" and isinstance(row.get("turns"), list) and row["turns"]:
            turn = row["turns"][draw(st.integers(0, len(row["turns"]) - 1))]
            if isinstance(turn, dict) and isinstance(turn.get("text"), str):
                turn["text"] = draw(weird_text) + turn["text"] + draw(weird_text)  # still valid: text is kept
        elif kind == "weird_id":
            row[draw(st.sampled_from(["session_id", "client_id", "counselor_id"]))] = draw(weird_text)
    return row


def _corrupt(draw, line: str) -> str:
    """Line-level damage to a JSON line: truncation, lone surrogate, huge number, deep nesting."""
    kind = draw(st.sampled_from(["none", "none", "truncate", "surrogate", "huge_int", "deep", "dup_key"]))
    if kind == "truncate":
        return line[: draw(st.integers(1, max(1, len(line) - 1)))]
    if kind == "surrogate":
        return line.replace('"text": "', '"text": "\\ud800', 1).replace('"session_id": "', '"session_id": "\\udfff', 1)
    if kind == "huge_int":
        return line.replace('"1": 4', '"1": ' + "7" * draw(st.sampled_from([4301, 20000])), 1)
    if kind == "deep":
        n = draw(st.sampled_from([50, 990, 100_000]))
        return line.replace('"context": ', '"context": ' + "[" * n + "]" * n + ', "x": ', 1)
    if kind == "dup_key":
        return line[:-1] + ', "session_id": ' + json.dumps(draw(weird_text)) + "}"
    return line


@st.composite
def hostile_lines(draw, force_invalid: bool = False) -> list[bytes]:
    """The lines of a JSONL file (bytes, without newlines). With `force_invalid`, one line is always malformed."""
    lines: list[bytes] = []
    for k in range(draw(st.integers(0 if force_invalid else 1, 4))):
        kind = draw(st.sampled_from(["session", "session", "session", "bytes", "text", "blank", "non_object"]))
        if kind == "session":
            line = json.dumps(draw(mutated_session(k)), ensure_ascii=draw(st.booleans()))
            lines.append(_corrupt(draw, line).encode("utf-8"))
        elif kind == "bytes":
            lines.append(draw(st.binary(max_size=40)).replace(b"\n", b""))
        elif kind == "text":
            lines.append(draw(weird_text).replace("\n", "").encode("utf-8"))
        elif kind == "blank":
            lines.append(draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])))
        else:
            lines.append(json.dumps(draw(json_values)).encode("utf-8"))
    if force_invalid:
        good = json.dumps(base_session(99), ensure_ascii=False)
        bad = draw(st.sampled_from([good[: len(good) // 2], "[1, 2]", '"just text"', "{" * 100_000, "\x00",
                                    good.replace('"language": "zh"', '"language": 7')]))
        lines.insert(draw(st.integers(0, len(lines))), bad.encode("utf-8"))
    return lines


@st.composite
def hostile_files(draw, force_invalid: bool = False) -> bytes:
    lines = draw(hostile_lines(force_invalid))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = eol.join(lines) + (eol if draw(st.booleans()) else b"")
    return (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + body


def _file(*rows) -> bytes:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    return "".join(line + "\n" for line in lines).encode("utf-8")


GOOD = json.dumps(base_session(0), ensure_ascii=False)
WEIRD_VALID = base_session(1)
WEIRD_VALID["session_id"] = "\u202e\u05e9\u05dc\u05d5\u05dd-e\u0301\u0301"
WEIRD_VALID["client_id"] = "\u0645\u0631\u062d\u0628\u0627"
WEIRD_VALID["turns"][0]["text"] = "\x00\x07\x1b[31m\u202e" + SECRET + "\u202c e\u0301\u0338 \u2028\u2029\x85 \U0001f600"
MB_SESSION = base_session(2)
MB_SESSION["turns"][1]["text"] = MB_TEXT

# Named cases every run sees (hypothesis @example), besides the generated ones.
NAMED = {
    "random_bytes": bytes(range(256)) * 4,
    "truncated_line": _file(GOOD[:-7]),
    "wrong_types": _file(session_dict(session_id=["x"], turns="none", client_ratings=[4] * 12)),
    "nested_100000_lists": _file("[" * 100_000 + "]" * 100_000),
    "nested_100000_objects": _file('{"a":' * 100_000 + "1" + "}" * 100_000),
    "nested_in_a_field": _file(GOOD[:-1] + ', "context": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "huge_json_line": _file(session_dict(session_id="big", client_ratings={f"k{i}": 3 for i in range(3000)})),
    "number_over_digit_limit": _file(GOOD.replace('"1": 4', '"1": ' + "9" * 5000, 1)),
    "lone_surrogate": _file(GOOD.replace('"text": "', '"text": "\\ud800', 1)),
    "control_rtl_combining": _file(WEIRD_VALID),
    "one_mb_utterance": _file(MB_SESSION),
    "empty": b"",
    "only_bom_and_blanks": b"\xef\xbb\xbf\n  \n\r\n",
    "nul_bytes": b"\x00" * 64 + b"\n",
}


# ------------------------------------------------------------------------------------------ checks


def _nonblank_lines(content: bytes) -> list[str]:
    """The lines the reader counts (a file the CLI accepted is valid UTF-8)."""
    text = content.decode("utf-8")
    text = text[1:] if text.startswith("\ufeff") else text
    return [line for line in text.split("\n") if line.strip()]


def assert_contract(result, *, summary: bool = True) -> None:
    """Exit 0/1/2; never an uncaught exception; an error is one line, or located problems plus a summary."""
    if currently_in_test_context():
        event(f"exit {result.exit_code}")  # shown by --hypothesis-show-statistics: both outcomes occur
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {type(exc).__name__}: {str(exc)[:300]}"
    assert result.exit_code in (0, 1, 2), result.exit_code
    assert "Traceback" not in result.output
    assert SECRET not in result.output, "transcript or rationale text in the output"
    if result.exit_code == 0:
        return
    lines = result.stderr.splitlines()
    assert lines, "a refusal must say why"
    if lines[-1].startswith("error: "):
        assert len(lines) == 1, lines[:5]
        return
    assert summary and SUMMARY_LINE.search(lines[-1]), lines[-1][:300]
    bad = [line for line in lines[:-1] if not PROBLEM_LINE.match(line)]
    assert not bad, bad[:3]


def _workdir(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _assert_no_temp_files(where: Path, allowed: set[str]) -> None:
    assert {p.name for p in where.iterdir()} <= allowed, sorted(p.name for p in where.iterdir())


# ------------------------------------------------------------------------------------------ the reader


@pytest.mark.parametrize("line, field, message", [
    ("9" * 5000, "<json>", "number of 5000 digits, over the limit"),
    (GOOD.replace('"1": 4', '"1": ' + "9" * 5000, 1), "client_ratings.key#1", "number of 5000 digits, over the limit"),
    (GOOD.replace('"1": 4', '"1": -' + "9" * 700, 1), "client_ratings.key#1", "number of 700 digits, over the limit"),
    (GOOD.replace('"1": 4', '"1": NaN', 1), "client_ratings.key#1", "NaN is not JSON"),
    (GOOD.replace('"1": 4', '"1": 1e999', 1), "client_ratings.key#1", "outside the range of a float"),
    (GOOD.replace('"turns": [{', '"turns": [{"speaker": "x", ', 1), "turns[0]", "duplicate JSON key"),
    (GOOD.replace('"rationales": {"1": "', '"rationales": {"1": -Infinity, "x": "', 1), "rationales.key#1",
     "-Infinity is not JSON"),
    (GOOD.replace('"text": "', '"text": "\\udc80', 1), "turns[0].text", "lone surrogate"),
    (GOOD.replace('"h0"', '"\\ud800h0"', 1), "session_id", "lone surrogate"),
    (GOOD.replace('"rationales": {"1"', '"rationales": {"\\ud83d"', 1), "rationales.key#1", "lone surrogate"),
    ("[" * 100_000 + "]" * 100_000, "<json>", "nested too deeply"),
])
def test_reader_locates_lines_that_used_to_crash(tmp_path, line, field, message):
    from care.data.reader import read_jsonl

    path = tmp_path / "in.jsonl"
    path.write_bytes(_file(GOOD.replace('"h0"', '"ok"'), line))
    parsed = read_jsonl(path)
    assert [s.session_id for s in parsed.sessions] == ["ok"]
    assert [(p.line, p.field) for p in parsed.problems] == [(2, field)]
    assert message in parsed.problems[0].message and SECRET not in str(parsed.problems[0])


def test_reader_keeps_paired_surrogate_escapes(tmp_path):
    from care.data.reader import read_jsonl

    path = tmp_path / "in.jsonl"
    path.write_bytes(_file(GOOD.replace('"text": "', '"text": "\\ud83d\\ude00', 1)))
    parsed = read_jsonl(path)
    assert parsed.problems == [] and parsed.sessions[0].turns[0].text.startswith("\U0001f600")


@given(content=hostile_files())
@settings(max_examples=60, **SETTINGS)
def test_reader_never_raises_on_a_line(content):
    """Line problems are collected; only file-level problems (not UTF-8, empty) raise, as one-line CareErrors."""
    from care.errors import CareError
    from care.data.reader import read_jsonl

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "in.jsonl"
        path.write_bytes(content)
        try:
            parsed = read_jsonl(path)
        except CareError as exc:
            assert "\n" not in str(exc) and ("not UTF-8" in str(exc) or "empty" in str(exc))
            return
        lines = _nonblank_lines(content)
        assert parsed.n_lines == len(lines)
        assert len(parsed.sessions) + len({p.line for p in parsed.problems}) == len(lines)
        for p in parsed.problems:
            assert "\n" not in str(p) and SECRET not in str(p)


# ------------------------------------------------------------------------------------------ care validate


@given(content=hostile_files())
@settings(max_examples=40, **SETTINGS)
@example(content=NAMED["random_bytes"]).via("named")
@example(content=NAMED["truncated_line"]).via("named")
@example(content=NAMED["wrong_types"]).via("named")
@example(content=NAMED["nested_100000_lists"]).via("named")
@example(content=NAMED["nested_100000_objects"]).via("named")
@example(content=NAMED["nested_in_a_field"]).via("named")
@example(content=NAMED["huge_json_line"]).via("named")
@example(content=NAMED["number_over_digit_limit"]).via("named")
@example(content=NAMED["lone_surrogate"]).via("named")
@example(content=NAMED["control_rtl_combining"]).via("named")
@example(content=NAMED["one_mb_utterance"]).via("named")
@example(content=NAMED["empty"]).via("named")
@example(content=NAMED["only_bom_and_blanks"]).via("named")
@example(content=NAMED["nul_bytes"]).via("named")
def test_validate_contract(run_cli, tmp_path, content):
    work = _workdir(tmp_path)
    path, report = work / "in.jsonl", work / "report.json"
    path.write_bytes(content)
    result = run_cli("validate", path, "--report", report)
    assert_contract(result)
    if report.exists():  # complete, and agreeing with the exit code
        doc = json.loads(report.read_text("utf-8"))
        assert doc["valid"] is (result.exit_code == 0)
        assert SECRET not in report.read_text("utf-8")
    if result.exit_code == 0:
        assert f": {len(_nonblank_lines(content))} sessions valid" in result.stdout
    _assert_no_temp_files(work, {"in.jsonl", "report.json"})


def test_validate_report_into_a_directory_is_a_one_line_error(run_cli, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_file(GOOD))
    (tmp_path / "report").mkdir()
    result = run_cli("validate", path, "--report", tmp_path / "report")
    assert_contract(result)
    assert result.exit_code == 1 and "cannot write" in result.stderr
    assert list((tmp_path / "report").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "report"]


# ------------------------------------------------------------------------------------------ instruments

def _builtin_instrument() -> dict:
    from care.data.instrument import instrument_path

    return yaml.safe_load(instrument_path("wai-sr").read_text("utf-8"))


INSTRUMENT = _builtin_instrument()


@st.composite
def hostile_instruments(draw) -> bytes:
    doc = copy.deepcopy(INSTRUMENT)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop_items", "empty_items", "dup_item", "dup_weird_id", "drop_item_key",
                                     "item_field", "top_field", "drop_top", "scale", "no_languages"]))
        items = doc.get("items")
        if kind == "drop_items":
            doc.pop("items", None)
        elif kind == "empty_items":
            doc["items"] = []
        elif kind == "dup_item" and isinstance(items, list) and items:
            items.append(copy.deepcopy(items[draw(st.integers(0, len(items) - 1))]))
        elif kind == "dup_weird_id" and isinstance(items, list) and len(items) > 1:
            items[0] = {**items[0], "id": "a\nb\u202e"} if isinstance(items[0], dict) else items[0]
            items[1] = {**items[1], "id": "a\nb\u202e"} if isinstance(items[1], dict) else items[1]
        elif kind == "drop_item_key" and isinstance(items, list) and items and isinstance(items[0], dict):
            items[0].pop(draw(st.sampled_from(["id", "dimension", "text"])), None)
        elif kind == "item_field" and isinstance(items, list) and items and isinstance(items[0], dict):
            items[0][draw(st.sampled_from(["id", "dimension", "text", "extra"]))] = draw(json_values)
        elif kind == "top_field":
            doc[draw(st.sampled_from(["name", "languages", "scale", "dimensions", "items"]))] = draw(json_values)
        elif kind == "drop_top":
            doc.pop(draw(st.sampled_from(["name", "languages", "scale", "dimensions"])), None)
        elif kind == "scale" and isinstance(doc.get("scale"), dict):
            doc["scale"][draw(st.sampled_from(["min", "max"]))] = draw(st.integers(-20, 20))
        elif kind == "no_languages":
            doc["languages"] = []
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))
    damage = draw(st.sampled_from(["none", "none", "truncate", "tab", "python_tag"]))
    if damage == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif damage == "tab":
        text = text.replace("  ", "\t", 1)
    elif damage == "python_tag":
        text = "!!python/object/apply:os.system ['true']\n" + text
    return text.encode("utf-8")


def _yaml_named(doc) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")


@given(instrument=hostile_instruments())
@settings(max_examples=30, **SETTINGS)
@example(instrument=_yaml_named({k: v for k, v in INSTRUMENT.items() if k != "items"})).via("items missing")
@example(instrument=_yaml_named({**INSTRUMENT, "items": INSTRUMENT["items"] * 2})).via("duplicate items")
@example(instrument=_yaml_named({**INSTRUMENT, "items": INSTRUMENT["items"][:-1]})).via("an item missing")
@example(instrument=b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n").via("deeply nested YAML")
@example(instrument=b"\xff\xfe not utf-8").via("random bytes")
@example(instrument=b"").via("empty")
def test_validate_with_hostile_instrument(run_cli, tmp_path, instrument):
    """A broken instrument is one `error:` line; one that loads validates the data as any other would."""
    work = _workdir(tmp_path)
    data, inst, report = work / "in.jsonl", work / "inst.yaml", work / "report.json"
    data.write_bytes(_file(GOOD, session_dict(session_id="other", client_id="c2")))
    inst.write_bytes(instrument)
    result = run_cli("validate", data, "--instrument", inst, "--report", report)
    assert_contract(result)
    if report.exists():
        assert json.loads(report.read_text("utf-8"))["valid"] is (result.exit_code == 0)
    else:
        assert result.exit_code == 1 and result.stderr.startswith("error: ") and "instrument" in result.stderr
    _assert_no_temp_files(work, {"in.jsonl", "inst.yaml", "report.json"})


def test_an_item_missing_from_the_instrument_is_located_in_the_data(run_cli, tmp_path):
    inst = tmp_path / "inst.yaml"
    inst.write_bytes(_yaml_named({**INSTRUMENT, "items": INSTRUMENT["items"][:-1]}))  # item 12 gone
    data = tmp_path / "in.jsonl"
    data.write_bytes(_file(GOOD))
    result = run_cli("validate", data, "--instrument", inst)
    assert_contract(result)
    assert f"{data}:1 session=h0 field=client_ratings.key#12: not an item of the instrument" in result.stderr


# ------------------------------------------------------------------------------------------ care annotations add


@pytest.fixture(scope="module")
def add_repo(template_repo, tmp_path_factory) -> Path:  # noqa: F811
    dest = tmp_path_factory.mktemp("hostile-add") / "repo"
    shutil.copytree(template_repo, dest, symlinks=True)
    return dest


@given(content=hostile_files(force_invalid=True))
@settings(max_examples=30, **SETTINGS)
@example(content=NAMED["random_bytes"]).via("named")
@example(content=NAMED["nested_100000_lists"]).via("named")
@example(content=NAMED["number_over_digit_limit"]).via("named")
@example(content=NAMED["lone_surrogate"]).via("named")
@example(content=NAMED["empty"]).via("named")
@example(content=_file(WEIRD_VALID, MB_SESSION, GOOD[:-3])).via("valid weird sessions next to a truncated line")
def test_add_refuses_without_touching_the_data(run_cli, add_repo, tmp_path, content):
    work = _workdir(tmp_path)
    new = work / "new.jsonl"
    new.write_bytes(content)
    before = _snapshot(add_repo)
    result = run_cli("annotations", "add", new, "--data", add_repo / "data")
    assert_contract(result)
    assert result.exit_code == 1
    assert _snapshot(add_repo) == before


def test_add_accepts_weird_but_valid_text_byte_for_byte(run_cli, repo, tmp_path):
    """Control, bidi and combining characters and a 1 MB utterance are data: appended exactly, never echoed."""
    from care.data.schema import Session

    new = tmp_path / "new.jsonl"
    new.write_bytes(_file(WEIRD_VALID, MB_SESSION))
    old = (repo / "data" / "sessions.jsonl").read_bytes()
    result = run_cli("annotations", "add", new, "--data", repo / "data")
    assert_contract(result)
    assert result.exit_code == 0, result.output[-500:]
    data = (repo / "data" / "sessions.jsonl").read_bytes()
    assert data.startswith(old)
    added = data[len(old):].decode("utf-8").split("\n")  # not splitlines(): U+2028 / U+0085 stay inside a line
    assert added.pop() == ""
    assert added == [Session.model_validate(r).to_json() for r in (WEIRD_VALID, MB_SESSION)]
    for line, row in zip(added, (WEIRD_VALID, MB_SESSION)):
        back = json.loads(line)
        for key in ("session_id", "client_id", "turns", "rationales"):
            assert back[key] == row[key], key
    assert "\u202e" not in result.output and "\x1b" not in result.output


@pytest.fixture
def repo(template_repo, tmp_path, monkeypatch) -> Path:  # noqa: F811
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    dest = tmp_path / "repo"
    shutil.copytree(template_repo, dest, symlinks=True)
    return dest


# ------------------------------------------------------------------------------------------ care score


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


@given(content=hostile_files())
@settings(max_examples=30, **SETTINGS)
@example(content=NAMED["random_bytes"]).via("named")
@example(content=NAMED["wrong_types"]).via("named")
@example(content=NAMED["nested_100000_lists"]).via("named")
@example(content=NAMED["number_over_digit_limit"]).via("named")
@example(content=NAMED["lone_surrogate"]).via("named")
@example(content=NAMED["control_rtl_combining"]).via("named")
@example(content=NAMED["one_mb_utterance"]).via("named")
@example(content=NAMED["empty"]).via("named")
def test_score_contract(run_cli, rel, tmp_path, content):
    work = _workdir(tmp_path)
    path, out = work / "in.jsonl", work / "scores.jsonl"
    path.write_bytes(content)
    result = run_cli("score", "--model", rel["package"], path, "--out", out, "--batch-size", "12")
    assert_contract(result)
    if result.exit_code:
        assert not out.exists() and result.stdout == ""
        _assert_no_temp_files(work, {"in.jsonl"})
        return
    lines = _nonblank_lines(content)
    records = [json.loads(line) for line in out.read_text("utf-8").split("\n")[:-1]]
    assert [r["session_id"] for r in records] == [json.loads(line)["session_id"] for line in lines]
    assert all(len(r["items"]) == 12 and 1 <= r["dimensions"]["bond"] <= 5 for r in records)
    assert SECRET not in out.read_text("utf-8")
    _assert_no_temp_files(work, {"in.jsonl", "scores.jsonl"})


def test_score_into_a_directory_is_a_one_line_error(run_cli, rel, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_file(GOOD))
    (tmp_path / "out").mkdir()
    result = run_cli("score", "--model", rel["package"], path, "--out", tmp_path / "out")
    assert_contract(result)
    assert result.exit_code == 2 and "is a directory" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "file").write_bytes(b"")  # a parent that is a file: found only when writing, still one line
    result = run_cli("score", "--model", rel["package"], path, "--out", tmp_path / "file" / "o.jsonl")
    assert result.exit_code == 1 and result.stderr.splitlines()[-1].startswith("error: ")
    assert "cannot write" in result.stderr and (tmp_path / "file").read_bytes() == b""


def test_score_with_a_hostile_model_path_is_a_one_line_error(run_cli, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_file(GOOD))
    for model in (tmp_path / "nope", path, tmp_path):
        result = run_cli("score", "--model", model, path, "--out", tmp_path / "o.jsonl")
        assert_contract(result)
        assert result.exit_code == 1 and not (tmp_path / "o.jsonl").exists()


def test_numbers_and_keys_json_cannot_hold_are_refused_with_their_place(tmp_path):
    """ESConv files: a 5,000-digit rating, NaN and a repeated key are one located line, never a traceback."""
    from care.data.importers.esconv import import_esconv
    from care.errors import CareError

    dialog = '{"dialog": [{"speaker": "usr", "text": "hi"}], "survey_score": {"seeker": {"empathy": %s}}}'
    cases = {"train.json": (dialog % ("9" * 5000) + "\n", ":1: field=survey_score.seeker.empathy: number of 5000"),
             "a.json": ("[" + dialog % "4" + ", " + dialog % "NaN" + "]",
                        ": dialog 2 field=survey_score.seeker.empathy: NaN is not JSON"),
             "b.json": ("[" + dialog % "4" + ", " + dialog % '4, "empathy": 5' + "]",
                        ": dialog 2 field=survey_score.seeker: duplicate JSON key (key 2 of an object")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text, "utf-8")
        with pytest.raises(CareError) as info:
            import_esconv([path])
        assert str(info.value).startswith(f"{path}{message}") and "\n" not in str(info.value)
