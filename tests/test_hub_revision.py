"""The real presets train on a pinned hub commit (care.model.presets.hub_revision): the preset's own, or
`model.revision` for another hub id; a hub id without one is refused before any work; the release records the
commit (manifest, card, registry). No download here: `snapshot_download` is replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from care.errors import CareError
from care.model import presets
from care.params import Params

COMMIT = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.timeout(300)  # a hang guard


def _params(**model) -> Params:
    return Params.model_validate({"model": model})


def test_each_real_preset_pins_a_commit_and_tiny_and_local_weights_need_none(tmp_path):
    for name, preset in presets.PRESETS.items():
        if preset["hub_id"] is not None:
            assert len(preset["revision"]) == 40 and presets.hub_revision(_params(preset=name)) == preset["revision"]
    assert presets.hub_revision(_params()) is None
    assert presets.hub_revision(_params(preset="llama-3.1-8b-instruct", base=str(tmp_path))) is None
    assert presets.hub_revision(_params(preset="qwen2.5-7b-instruct", revision=COMMIT)) == COMMIT


def test_another_hub_id_needs_a_commit_and_a_commit_is_40_hex_digits():
    with pytest.raises(CareError, match="model.base someone/model is a hub id without a pinned commit"):
        presets.hub_revision(_params(preset="llama-3.1-8b-instruct", base="someone/model"))
    assert presets.hub_revision(_params(preset="llama-3.1-8b-instruct", base="someone/model", revision=COMMIT)) == COMMIT
    for bad in ("main", "v1.0", COMMIT[:7], COMMIT.upper()):
        with pytest.raises(ValueError, match="model.revision"):
            _params(revision=bad)


def test_the_base_is_the_snapshot_of_the_pinned_commit(tmp_path, monkeypatch):
    calls = []

    def snapshot_download(repo_id, revision=None, local_files_only=False, allow_patterns=None):
        calls.append((repo_id, revision, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(tmp_path / "snapshots" / revision)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    path, key = presets.prepare_base(_params(preset="qwen2.5-7b-instruct"))
    commit = presets.PRESETS["qwen2.5-7b-instruct"]["revision"]
    assert path == Path(tmp_path / "snapshots" / commit) and key == f"Qwen/Qwen2.5-7B-Instruct@{commit}"
    assert calls == [("Qwen/Qwen2.5-7B-Instruct", commit, True), ("Qwen/Qwen2.5-7B-Instruct", commit, False)]


def test_an_unreachable_hub_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(CareError, match=r"cannot fetch it from the hub \(OSError\)"):
        presets.prepare_base(_params(preset="llama-3.1-8b-instruct"))


def test_care_train_refuses_an_unpinned_hub_id_before_any_work(run_cli, tmp_path):
    result = run_cli("train", "--params", "params.ci.yaml", "--metrics-dir", tmp_path / "m", "--plots-dir",
                     tmp_path / "p", "--set", f"release.out={tmp_path / 'r'}", "--set", "model.preset=llama-3.1-8b-instruct",
                     "--set", "model.base=someone/model")
    assert result.exit_code != 0 and "without a pinned commit" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / name).exists() for name in ("m", "p", "r"))


def test_the_card_and_the_registry_record_the_commit():
    from care.registry.promotion import registry_metadata
    from care.release.model_card import _revision

    assert _revision(COMMIT) == f" at hub commit {COMMIT}" and _revision(None) == ""
    assert registry_metadata({"base_revision": COMMIT, "gate": {"passed": True}})["base_revision"] == COMMIT
