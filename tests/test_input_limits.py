"""Input size limits (issue 14, item 8): `data.limits` in params, checked before the expensive work.

A file over the limit is refused from its size alone (a sparse 2 GiB file: instant, nothing read); a line over
the limit is a located problem and is never JSON-parsed; too many turns, too long an utterance, context or
rationale and too many keys in a mapping are located problems found before schema and Great Expectations
validation. Limits are params (`--params`, `--set data.limits...`), refused when not positive.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import session_dict, write_jsonl_file

from care.errors import CareError
from care.params import DataLimits, load_params


def test_defaults_are_documented_in_params_yaml():
    assert load_params("params.yaml").data.limits == DataLimits()
    assert DataLimits().file_bytes == 1 << 30


def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path, run_cli, monkeypatch):
    import care.data.reader as reader

    big = tmp_path / "huge.jsonl"
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)  # sparse: 2 GiB that take no disk
    monkeypatch.setattr(reader.json, "loads", lambda *a, **k: pytest.fail("parsed a file over the limit"))
    result = run_cli("validate", big)
    assert result.exit_code == 1 and "over the limit of 1073741824 (data.limits.max_file_mb in params)" in result.output
    small = write_jsonl_file(tmp_path / "small.jsonl", [session_dict()])
    tight = tmp_path / "params.yaml"
    tight.write_text("data:\n  limits:\n    max_file_mb: 0.001\n", "utf-8")
    result = run_cli("validate", small, "--params", tight)
    assert result.exit_code == 1 and "over the limit of 1048 " in result.output


def test_lines_texts_turns_and_keys_over_the_limits_are_located_problems(tmp_path, monkeypatch):
    import care.data.reader as reader
    from care.data.validation import validate_file

    limits = DataLimits(max_line_kb=64, max_text_chars=1000, max_turns=50, max_keys=20)
    long_line = session_dict(session_id="big", context="字" * 30_000)  # ~90 KB in UTF-8
    rows = [session_dict(session_id="ok"),
            long_line,
            session_dict(session_id="turns", turns=[{"speaker": "client", "text": "嗯"}] * 51),
            session_dict(session_id="utterance", turns=[{"speaker": "counselor", "text": "a" * 1001},
                                                        {"speaker": "client", "text": "b"}]),
            session_dict(session_id="rationale", rationales={**session_dict()["rationales"], "3": "r" * 1001}),
            session_dict(session_id="keys", client_ratings={str(i): 3 for i in range(1, 40)})]
    path = write_jsonl_file(tmp_path, rows)
    parsed_lines = []
    real = reader.json.loads
    def loads(s, **k):  # json is shared: count the reader's calls (the only ones with a pairs hook)
        if "object_pairs_hook" in k:
            parsed_lines.append(len(s))
        return real(s, **k)

    monkeypatch.setattr(reader.json, "loads", loads)
    result = validate_file(path, limits=limits, keep_sessions=True)
    got = {(p.line, p.field, p.message.split(",")[0]) for p in result.problems}
    assert got == {(2, "<line>", f"{len(json.dumps(long_line, ensure_ascii=False).encode())} bytes"),
                   (3, "turns", "51 turns"),
                   (4, "turns[0].text", "1001 characters"),
                   (5, "rationales.3", "1001 characters"),
                   (6, "client_ratings", "39 keys")}
    assert all("data.limits." in p.message for p in result.problems)
    assert max(parsed_lines) < 64 << 10  # the long line was never parsed
    assert [s.session_id for s in result.sessions] == ["ok"]


def test_limits_are_checked_params(tmp_path):
    from care.errors import UsageError

    for bad in ("data.limits.max_line_kb=0", "data.limits.max_turns=-1", "data.limits.max_file_mb=.nan"):
        with pytest.raises(UsageError, match="data.limits"):
            load_params("params.yaml", [bad])


def test_the_data_a_run_loads_is_read_no_further_than_what_it_validated(tmp_path):
    from care.params import DataParams
    from care.run.data import DataChanged, load_data, validate_data

    path = write_jsonl_file(tmp_path, [session_dict(session_id=f"s{i}", client_id=f"c{i}") for i in range(3)])
    ref = validate_data(DataParams(path=str(path)))
    assert ref.n_bytes == os.path.getsize(path)
    with open(path, "ab") as fh:
        fh.write(b" " * (1 << 20))
    with pytest.raises(DataChanged):
        load_data(ref)


def test_the_importer_checks_the_file_size_first(tmp_path, monkeypatch):
    import care.data.importers.esconv as esconv
    import care.data.reader as reader

    big = tmp_path / "train.json"
    big.write_text("{}\n", "utf-8")
    monkeypatch.setattr(reader, "DataLimits", lambda: DataLimits(max_file_mb=1e-6))
    with pytest.raises(CareError, match="over the limit"):
        esconv.import_esconv([big])
