"""Validate once: the run records the data's sha256 and every later step refuses data changed since."""

from __future__ import annotations

import pytest

from conftest import corpus_rows, write_jsonl_file

from care.errors import InvalidData
from care.params import DataParams
from care.run.data import DataChanged, load_data, validate_data


def test_validated_data_loads_without_revalidating(tmp_path, monkeypatch):
    path = write_jsonl_file(tmp_path / "sessions.jsonl", corpus_rows(10, n_turns=4))
    ref = validate_data(DataParams(path=str(path), limit=8))
    assert ref.n_sessions == 8 and len(ref.sha256) == 64 and ref.languages == ["zh"]

    import care.data.validation

    def no_second_validation(*args, **kwargs):
        raise AssertionError("load_data ran the validation suite again")

    monkeypatch.setattr(care.data.validation, "validate_sessions", no_second_validation)
    sessions, instrument = load_data(ref)
    assert [s.session_id for s in sessions] == [f"s{k:05d}" for k in range(8)]
    assert instrument.name == "wai-sr"


def test_data_changed_after_validation_is_refused(tmp_path):
    rows = corpus_rows(10, n_turns=4)
    path = write_jsonl_file(tmp_path / "sessions.jsonl", rows)
    ref = validate_data(DataParams(path=str(path)))
    write_jsonl_file(path, rows + [dict(rows[0], session_id="extra")])
    with pytest.raises(DataChanged, match="changed after this run validated it"):
        load_data(ref)


def test_instrument_changed_after_validation_is_refused(tmp_path):
    from care.data.instrument import instrument_path

    inst = tmp_path / "inst.yaml"
    inst.write_bytes(instrument_path("wai-sr").read_bytes())
    path = write_jsonl_file(tmp_path / "sessions.jsonl", corpus_rows(5, n_turns=4))
    ref = validate_data(DataParams(path=str(path), instrument=str(inst)))
    inst.write_bytes(inst.read_bytes() + b"\n# edited\n")
    with pytest.raises(DataChanged, match="instrument"):
        load_data(ref)


def test_invalid_data_is_refused_at_validation(tmp_path):
    path = write_jsonl_file(tmp_path / "sessions.jsonl", [dict(corpus_rows(1)[0], client_ratings={"1": 9})])
    with pytest.raises(InvalidData):
        validate_data(DataParams(path=str(path)))
