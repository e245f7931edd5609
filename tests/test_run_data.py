"""Validate once: the run records the data's sha256 and every later step refuses data changed since; a pass of
`care validate` (the `validate` stage of `dvc repro`) on the same bytes, instrument and limits is not rerun."""

from __future__ import annotations

import pytest

from conftest import corpus_rows, write_jsonl_file

from care.errors import InvalidData
from care.params import DataLimits, DataParams
from care.run.data import DataChanged, load_data, validate_data


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CARE_CACHE_DIR", str(tmp_path / "cache"))


def _suite_runs(monkeypatch) -> list:
    """Appends one entry per Great Expectations suite run."""
    import care.data.validation as validation

    runs, finish = [], validation.SessionValidator.finish
    monkeypatch.setattr(validation.SessionValidator, "finish", lambda self: runs.append(1) or finish(self))
    return runs


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


def test_the_run_reuses_the_pass_of_care_validate(tmp_path, monkeypatch, run_cli):
    path = write_jsonl_file(tmp_path / "sessions.jsonl", corpus_rows(10, n_turns=4))
    runs = _suite_runs(monkeypatch)
    assert run_cli("validate", path, "--report", tmp_path / "validation.json").exit_code == 0
    reused = validate_data(DataParams(path=str(path), limit=8))
    assert len(runs) == 1  # `care validate` only
    monkeypatch.setenv("CARE_CACHE_DIR", str(tmp_path / "empty-cache"))
    validated = validate_data(DataParams(path=str(path), limit=8))
    assert len(runs) == 2 and validated == reused  # the same reference, counts and provenance either way


def test_other_bytes_or_limits_are_validated_again(tmp_path, monkeypatch):
    rows = corpus_rows(10, n_turns=4)
    path = write_jsonl_file(tmp_path / "sessions.jsonl", rows)
    runs = _suite_runs(monkeypatch)
    validate_data(DataParams(path=str(path)))
    validate_data(DataParams(path=str(path)))
    assert len(runs) == 1
    validate_data(DataParams(path=str(path), limits=DataLimits(max_turns=100)))
    assert len(runs) == 2
    write_jsonl_file(path, rows + [dict(rows[0], session_id="extra")])
    assert validate_data(DataParams(path=str(path))).n_sessions == 11 and len(runs) == 3


def test_a_report_saying_valid_is_never_taken_for_a_pass(tmp_path, run_cli):
    path = write_jsonl_file(tmp_path / "sessions.jsonl", [dict(corpus_rows(1)[0], client_ratings={"1": 9})])
    report = tmp_path / "validation.json"
    assert run_cli("validate", path, "--report", report).exit_code == 1
    report.write_text('{"valid": true, "n_problems": 0, "problems": []}')  # tampered
    with pytest.raises(InvalidData):
        validate_data(DataParams(path=str(path)))
