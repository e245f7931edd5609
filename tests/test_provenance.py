"""The registered data version is the content's own hash: DVC's md5 only when the bytes trained on are what
the `.dvc` file records (recomputed from them, DVC's way), else `sha256:<bytes>` and `data_dirty: true`, which
the model card and the registry carry. Variants: an edit without `dvc add`, and an interrupted
`care annotations add` (new sessions.jsonl, old data.dvc)."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

from care.run.provenance import data_provenance as _provenance
from test_intake import _dvc, _new_rows, repo, template_repo  # noqa: F401  (a git + DVC repo, `dvc add data`)

pytestmark = pytest.mark.timeout(300)


def data_provenance(path, raw: bytes) -> dict:
    return _provenance(path, hashlib.sha256(raw).hexdigest(), hashlib.md5(raw, usedforsecurity=False).hexdigest())


def _recorded(repo) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text("utf-8"))["outs"][0]["md5"]


def _append(path, rows) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def test_the_version_is_dvcs_md5_only_when_the_bytes_match_it(repo):
    sessions = repo / "data" / "sessions.jsonl"
    clean = data_provenance(sessions, sessions.read_bytes())
    assert clean == {"version": _recorded(repo), "dirty": False, "dvc_md5": _recorded(repo)}

    old_dvc = (repo / "data.dvc").read_bytes()
    _append(sessions, _new_rows(1))  # an edit without `dvc add`
    raw = sessions.read_bytes()
    edited = data_provenance(sessions, raw)
    assert edited == {"version": f"sha256:{hashlib.sha256(raw).hexdigest()}", "dirty": True,
                      "dvc_md5": _recorded(repo)}

    _dvc(repo, "add", "-q", "data")  # recorded: DVC's own md5 is the one recomputed from the bytes
    assert _recorded(repo) != clean["version"]
    assert data_provenance(sessions, raw) == {"version": _recorded(repo), "dirty": False, "dvc_md5": _recorded(repo)}

    (repo / "data.dvc").write_bytes(old_dvc)  # `care annotations add` killed during `dvc add`: new bytes, old record
    assert data_provenance(sessions, raw)["dirty"] is True
    (repo / "data" / "notes.txt").write_text("another file of the tracked directory\n", "utf-8")
    _dvc(repo, "add", "-q", "data")
    assert data_provenance(sessions, raw)["version"] == _recorded(repo)  # every file of the directory counts


def test_untracked_data_is_versioned_by_its_sha256(tmp_path):
    path = tmp_path / "sessions.jsonl"
    path.write_bytes(b"{}\n")
    sha = hashlib.sha256(b"{}\n").hexdigest()
    assert data_provenance(path, b"{}\n") == {"version": f"sha256:{sha}", "dirty": None, "dvc_md5": None}


def test_a_dirty_run_says_so_in_its_data_ref_card_and_registry_metadata(repo):
    from care.data.instrument import load_instrument
    from care.params import DataParams
    from care.registry.promotion import registry_metadata
    from care.release.model_card import model_card
    from care.run.data import validate_data

    sessions = repo / "data" / "sessions.jsonl"
    _append(sessions, _new_rows(1))
    ref = validate_data(DataParams(path=str(sessions)))
    assert ref.dirty is True and ref.version == f"sha256:{ref.sha256}" and ref.dvc_md5 == _recorded(repo)
    meta = {"data_version": ref.version, "data_dirty": ref.dirty, "data_dvc_md5": ref.dvc_md5,
            "data_path": ref.path, "data_sha256": ref.sha256, "n_sessions": ref.n_sessions,
            "scoring": {"max_length": 1024, "target_tokens": 64, "context_policy": "keep_end", "languages": ["zh"],
                        "prompt_version": "abc", "prompt_date": "2024-07-26", "readout": "expected",
                        "grounded_quotes": True}, "gate": {"passed": True}, "cv": {"mean": {}}}
    card = model_card(meta, load_instrument("wai-sr"))
    assert "Data not as recorded" in card and ref.dvc_md5 in card and ref.version in card
    kept = registry_metadata({"metadata": meta})
    assert kept["data_dirty"] is True and kept["data_version"] == ref.version and kept["data_dvc_md5"] == ref.dvc_md5
