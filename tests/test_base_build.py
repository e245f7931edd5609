"""`care base build` at a micro size: what it writes, that an interrupted build resumes to the same weights,
that the tokenizer covers other scripts, and that the tiny preset refuses a missing or different base."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from care.errors import CareError
from care.model.base_files import BASE_CARD, base_digest
from care.params import load_params

MICRO = {"model": {"base_build": {
    "vocab_size": 1400, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "window": 192,
    "batch": 4, "steps": 6, "warmup_steps": 2, "eval_every": 3, "checkpoint_every": 3,
    "corpus": {"sessions_per_language": 24, "heldout_sessions_per_language": 4, "script_lines_per_locale": 60,
               "script_locales": ["ja_JP", "ru_RU", "ko_KR"], "script_share": 0.2}}}}


def _weights(d: Path) -> str:
    return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(MICRO), "utf-8")
    from typer.testing import CliRunner

    from care_cli.main import app

    result = CliRunner().invoke(app, ["base", "build", "--params", str(params_file), "--out", str(root / "base")])
    assert result.exit_code == 0, result.output
    return root, params_file, result.output


def test_the_build_writes_a_loadable_base_with_its_card_and_loss_curve(micro):
    root, _, output = micro
    base = root / "base"
    card = json.loads((base / BASE_CARD).read_text("utf-8"))
    assert card["base_build"]["steps"] == 6 and card["pretrain_tokens"] > 0
    assert card["corpus"]["documents"]["script"] > 0 and card["corpus"]["documents"]["chat"] > 0
    curve = json.loads((base / "loss_curve.json").read_text("utf-8"))["curve"]
    assert [p["step"] for p in curve] == [0, 3, 6] and curve[-1]["heldout_loss"] < curve[0]["heldout_loss"]
    assert (base / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    digest = base_digest(base)
    assert f"digest {digest}" in output and not (root / "base.checkpoint").exists()
    from care.model.presets import load_base

    model, tok = load_base(base, None, "cpu")
    assert model.config.num_hidden_layers == 1 and tok.pad_token_id != tok.eos_token_id


def test_the_tokenizer_report_covers_every_script_it_was_given(micro):
    root, _, _ = micro
    report = json.loads((root / "base" / BASE_CARD).read_text("utf-8"))["tokenizer"]
    assert set(report) == {"zh", "en", "ja_JP", "ru_RU", "ko_KR"}
    assert all(0 < r["tokens_per_char"] < 4 and 0 <= r["byte_fallback_share"] <= 1 for r in report.values())
    # a small alphabet gets its own tokens even in a micro vocabulary (the shipped base's figures: docs/results.md)
    assert report["ru_RU"]["byte_fallback_share"] < 0.3 and report["ru_RU"]["tokens_per_char"] < 1.5


def test_an_interrupted_build_resumes_to_the_same_weights(micro, tmp_path):
    from care.model.base_build import build_base

    root, params_file, _ = micro
    p = load_params(params_file)
    assert build_base(p, tmp_path / "b", progress=False, stop_after=4) == {"stopped_at": 4}
    assert (tmp_path / "b.checkpoint" / "optimizer.safetensors").is_file() and not (tmp_path / "b").exists()
    card = build_base(p, tmp_path / "b", progress=False)
    assert card["resumed_from_step"] == 4
    assert _weights(tmp_path / "b") == _weights(root / "base")  # same as the uninterrupted build, bit for bit
    assert card["heldout_loss"] == json.loads((root / "base" / BASE_CARD).read_text("utf-8"))["heldout_loss"]


def test_the_tiny_preset_refuses_a_missing_or_different_base(micro, tmp_path):
    from care.model.presets import prepare_base

    root, params_file, _ = micro
    base = root / "base"
    good = load_params(params_file, [f"model.tiny_base.path={base}", f"model.tiny_base.digest={base_digest(base)}"])
    assert prepare_base(good) == (base.resolve(), base_digest(base))
    missing = load_params(params_file, [f"model.tiny_base.path={tmp_path / 'none'}"])
    with pytest.raises(CareError, match=r"no embedded base there; run `dvc pull base.dvc`.*care base build"):
        prepare_base(missing)
    other = load_params(params_file, [f"model.tiny_base.path={base}", "model.tiny_base.digest=" + "ab" * 32])
    with pytest.raises(CareError, match="is not model.tiny_base.digest abababababababab"):
        prepare_base(other)


def test_the_build_never_replaces_a_foreign_directory(micro, tmp_path, run_cli):
    _, params_file, _ = micro
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep", "utf-8")
    result = run_cli("base", "build", "--params", params_file, "--out", foreign)
    assert result.exit_code == 1 and "not a base this tool built" in result.output
    assert (foreign / "notes.txt").read_text("utf-8") == "keep"


def test_real_presets_resolve_to_a_hub_snapshot_or_a_local_directory(micro, tmp_path, monkeypatch):
    from care.model.presets import prepare_base

    def offline(*args, **kwargs):  # this machine reaches no hub; tests/test_hub_revision.py covers the snapshot
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    root, params_file, _ = micro
    with pytest.raises(CareError, match="Qwen/Qwen2.5-7B-Instruct at commit .* cannot fetch it from the hub"):
        prepare_base(load_params(params_file, ["model.preset=qwen2.5-7b-instruct"]))
    ref, key = prepare_base(load_params(params_file, [f"model.base={root / 'base'}"]))
    assert ref == (root / "base").resolve()
    with pytest.raises(CareError, match="config.json"):
        prepare_base(load_params(params_file, [f"model.base={tmp_path}"]))  # a directory without a model


def test_the_shipped_base_is_the_pinned_one_and_covers_common_scripts():
    """base/tiny (pulled by scripts/setup.sh) has the digest params.yaml pins, was built with params.yaml's
    model.base_build, and its tokenizer gives no common script fewer than one token per 1.2 characters."""
    root = Path(__file__).resolve().parents[1]
    p = load_params(root / "params.yaml")
    base = root / p.model.tiny_base.path
    assert base_digest(base) == p.model.tiny_base.digest
    card = json.loads((base / BASE_CARD).read_text("utf-8"))
    assert card["base_build"] == p.model.base_build.model_dump(mode="json")
    report = card["tokenizer"]
    assert {"zh", "en", "ja_JP", "ko_KR", "ru_RU", "el_GR", "ar_AA", "hi_IN", "th_TH"} <= set(report)
    assert all(r["tokens_per_char"] < 1.2 for r in report.values()), report
    assert report["zh"]["tokens_per_char"] < 0.5 and report["en"]["tokens_per_char"] < 0.3
