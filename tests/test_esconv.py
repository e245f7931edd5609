"""`care import esconv`: both ESConv formats, skips, off-scale reports, the helper item, validation, bytes.

The corpus is real data under CC BY-NC 4.0: it is read from ../shared/data/esconv (relative to the repo
root) and never copied into the repository; tests write small slices of it into tmp_path only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from care.data.importers.esconv import HELPER_ITEM, import_esconv, write_import
from care.data.instrument import load_instrument

ESCONV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "esconv"
HF_FILE = ESCONV / "train.json"
ORIG_FILE = ESCONV / "FailedESConv.part-a.json"

pytestmark = pytest.mark.skipif(
    not (HF_FILE.is_file() and ORIG_FILE.is_file()),
    reason=f"ESConv not available at {ESCONV} (real data, CC BY-NC 4.0, kept outside the repository)",
)


def _hf_records(n: int) -> list[dict]:
    out = []
    with HF_FILE.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def _orig_records(n: int) -> list[dict]:
    return json.loads(ORIG_FILE.read_text("utf-8"))[:n]


def _write_hf(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _write_orig(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _complete(record: dict) -> bool:
    seeker = (record.get("survey_score") or {}).get("seeker") or {}
    return all(seeker.get(k) not in (None, "") for k in ("empathy", "relevance"))


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    """A 40-dialog HF slice and a 30-dialog original-format slice, each with incomplete surveys in it."""
    d = tmp_path_factory.mktemp("esconv")
    hf = _hf_records(40)
    orig = _orig_records(30)
    assert any(not _complete(r) for r in hf) and any(not _complete(r) for r in orig), "slices need skips"
    return {"dir": d, "hf": hf, "orig": orig,
            "hf_path": _write_hf(d / "train.json", hf), "orig_path": _write_orig(d / "FailedESConv.part-a.json", orig)}


def test_both_formats_mapped(slices):
    result = import_esconv([slices["hf_path"], slices["orig_path"]])
    rep = result.report()
    hf_rep, orig_rep = rep["files"]
    assert (hf_rep["format"], orig_rep["format"]) == ("hf-jsonl", "original-json")
    assert hf_rep["read"] == 40 and orig_rep["read"] == 30
    expected_hf = [i for i, r in enumerate(slices["hf"], 1) if _complete(r)]
    expected_orig = [i for i, r in enumerate(slices["orig"], 1) if _complete(r)]
    assert hf_rep["written"] == len(expected_hf) and orig_rep["written"] == len(expected_orig)
    assert hf_rep["skipped"]["incomplete_survey"] == 40 - len(expected_hf)
    assert orig_rep["skipped"]["incomplete_survey"] == 30 - len(expected_orig)
    assert rep["total"]["written"] == len(result.sessions) == len(expected_hf) + len(expected_orig)

    ids = [s.session_id for s in result.sessions]
    assert ids == [f"esconv-train-{i:05d}" for i in expected_hf] + \
        [f"esconv-failedesconv-part-a-{i:05d}" for i in expected_orig]
    by_id = {s.session_id: s for s in result.sessions}
    for source, prefix, text_key, seeker_tag in ((slices["hf"], "esconv-train", "text", "usr"),
                                                 (slices["orig"], "esconv-failedesconv-part-a", "content", "speaker")):
        for i, record in enumerate(source, 1):
            if not _complete(record):
                continue
            s = by_id[f"{prefix}-{i:05d}"]
            assert s.client_id == s.session_id and s.counselor_id is None and s.language == "en"
            assert s.context == record["situation"].strip()
            seeker = record["survey_score"]["seeker"]
            assert s.client_ratings == {"empathy": int(seeker["empathy"]), "relevance": int(seeker["relevance"])}
            assert s.rationales is None and s.counselor_ratings is None
            kept = [t for t in record["dialog"] if t[text_key].strip()]
            assert [t.text for t in s.turns] == [t[text_key].strip() for t in kept]
            assert [t.speaker for t in s.turns] == ["client" if t["speaker"] == seeker_tag else "counselor" for t in kept]


def test_supporter_item_is_a_helper_rating_never_a_label(slices):
    result = import_esconv([slices["hf_path"], slices["orig_path"]])
    records = {f"esconv-train-{i:05d}": r for i, r in enumerate(slices["hf"], 1)}
    records.update({f"esconv-failedesconv-part-a-{i:05d}": r for i, r in enumerate(slices["orig"], 1)})
    with_helper = 0
    for s in result.sessions:
        assert s.counselor_ratings is None
        assert HELPER_ITEM not in s.client_ratings
        raw = ((records[s.session_id]["survey_score"].get("supporter")) or {}).get("relevance")
        if raw is None:
            assert s.helper_ratings is None
        else:
            assert s.helper_ratings == {HELPER_ITEM: int(raw)}
            with_helper += 1
    assert with_helper > 0
    assert result.report()["total"]["helper_ratings_written"] == with_helper


def test_off_scale_and_non_integer_reported_and_skipped(tmp_path, slices):
    records = [json.loads(json.dumps(r)) for r in slices["hf"][:12] if _complete(r)][:6]
    records[0]["survey_score"]["seeker"]["empathy"] = "6"  # off the 1-5 scale
    records[1]["survey_score"]["seeker"]["relevance"] = "0"  # off the 1-5 scale
    records[2]["survey_score"]["seeker"]["empathy"] = "4.5"  # not an integer: never rounded
    records[3]["survey_score"]["seeker"]["relevance"] = 3.0  # a float is not coerced either
    records[4]["survey_score"].setdefault("supporter", {})["relevance"] = "7"  # helper off its 0-5 scale
    records[5]["survey_score"].setdefault("supporter", {})["relevance"] = "0"  # 0 is on the helper's scale
    path = _write_hf(tmp_path / "crafted.json", records)
    result = import_esconv([path])
    rep = result.report()["files"][0]
    assert rep["read"] == 6 and rep["written"] == 2
    assert rep["skipped"]["off_scale"] == 4
    assert rep["off_scale"] == {"survey_score.seeker.empathy": 2, "survey_score.seeker.relevance": 2,
                                "survey_score.supporter.relevance": 1}
    located = {(p["session_id"], p["field"]) for p in result.problems}
    assert located == {
        ("esconv-crafted-00001", "survey_score.seeker.empathy"),
        ("esconv-crafted-00002", "survey_score.seeker.relevance"),
        ("esconv-crafted-00003", "survey_score.seeker.empathy"),
        ("esconv-crafted-00004", "survey_score.seeker.relevance"),
        ("esconv-crafted-00005", "survey_score.supporter.relevance"),
    }
    for p in result.problems:  # located, never the value or any text
        assert set(p) == {"file", "session_id", "field", "message"}
        assert not any(v in p["message"] for v in ("6", "4.5", "3.0", "7"))
    kept = {s.session_id: s for s in result.sessions}
    assert set(kept) == {"esconv-crafted-00005", "esconv-crafted-00006"}
    assert kept["esconv-crafted-00005"].helper_ratings is None  # dropped, the dialog itself kept
    assert kept["esconv-crafted-00006"].helper_ratings == {HELPER_ITEM: 0}


def test_empty_turns_dropped_and_counted(tmp_path, slices):
    records = [json.loads(json.dumps(r)) for r in slices["orig"] if _complete(r)][:2]
    n_turns = len(records[0]["dialog"])
    records[0]["dialog"][1]["content"] = "   "
    records[0]["dialog"][2]["content"] = ""
    path = _write_orig(tmp_path / "orig.json", records)
    result = import_esconv([path])
    assert result.report()["files"][0]["empty_turns_dropped"] == 2
    assert len(result.sessions[0].turns) == n_turns - 2
    assert all(t.text.strip() for s in result.sessions for t in s.turns)


def test_cli_output_validates_and_reimport_is_byte_identical(tmp_path, slices, run_cli):
    from care.data.validation import validate_file

    args = ["import", "esconv", str(slices["hf_path"]), str(slices["orig_path"])]
    first = run_cli(*args, "--out", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    second = run_cli(*args, "--out", str(tmp_path / "b"))
    assert second.exit_code == 0, second.output
    for name in ("sessions.jsonl", "import.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    report = json.loads((tmp_path / "a" / "import.json").read_text("utf-8"))
    assert [f["file"] for f in report["files"]] == ["train.json", "FailedESConv.part-a.json"]

    result = validate_file(tmp_path / "a" / "sessions.jsonl", instrument="esconv-seeker")
    assert result.valid, [str(p) for p in result.problems]
    assert result.n_sessions == report["total"]["written"]

    ok = run_cli("validate", str(tmp_path / "a" / "sessions.jsonl"), "--instrument", "esconv-seeker")
    assert ok.exit_code == 0, ok.output


def test_colliding_file_names_refused(tmp_path, slices):
    from care.errors import UsageError

    other = tmp_path / "other"
    other.mkdir()
    copy = _write_hf(other / "train.json", slices["hf"][:3])
    with pytest.raises(UsageError, match="collide"):
        import_esconv([slices["hf_path"], copy])


def test_nothing_imported_is_an_error_and_writes_nothing(tmp_path, slices):
    from care.errors import CareError

    incomplete = [r for r in slices["hf"] if not _complete(r)][:2]
    path = _write_hf(tmp_path / "bad.json", incomplete)
    with pytest.raises(CareError, match="no dialog imported"):
        write_import([path], tmp_path / "out")
    assert not (tmp_path / "out" / "sessions.jsonl").exists()


def test_instrument_ships():
    inst = load_instrument("esconv-seeker")
    assert inst.items_by_dimension == {"task": ["relevance"], "bond": ["empathy"]}
    assert (inst.scale.min, inst.scale.max) == (1, 5)
    assert all(set(labels) >= {"en", "zh"} for labels in inst.scale.labels.values())


def test_line_separator_inside_a_string_does_not_split_a_record(tmp_path, slices):
    """U+2028 is legal inside a JSON string; only newlines separate HF records."""
    rec = json.loads(json.dumps(slices["hf"][0]))
    turn = next(t for t in rec["dialog"] if t.get("text"))
    turn["text"] = turn["text"] + "\u2028" + "more"
    path = _write_hf(tmp_path / "train.json", [rec] + slices["hf"][1:3])
    assert import_esconv([path]).report()["files"][0]["read"] == 3
