"""Release: LoRA merge parity, ONNX export parity, package manifest, and the torch-free package tokenizer.

A tiny random Llama + small BPE tokenizer is built once per test process (`tiny_release`, also used by
tests/test_score_cli.py); its LoRA adapter gets random non-zero B matrices so the merge is not vacuous.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import corpus_rows

from care.model.prompts import PromptConfig
from care.params import ModelParams

PROMPT = PromptConfig.from_params(ModelParams(max_length=1024, target_tokens=32))
_BUILT: dict[str, dict] = {}


def _sessions(n: int, seed: int = 0, language: str = "zh", n_turns: int = 16):
    from care.data.schema import Session

    return [Session.model_validate(r) for r in corpus_rows(n, n_turns=n_turns, seed=seed, language=language)]


def build_tiny_release(root: Path) -> dict:
    """base -> LoRA adapter -> merged -> onnx -> package under `root` (built once per process)."""
    key = str(root)
    if key in _BUILT:
        return _BUILT[key]
    import torch
    from peft import LoraConfig, get_peft_model

    from care.data.instrument import instrument_path, load_instrument
    from care.data.prompt_texts import builtin_prompt_texts
    from care.model.prompts import item_block
    from care.release import build_package, check_parity, export_onnx, merge_adapter
    from care.model.tiny import random_model, train_tokenizer

    inst = load_instrument("wai-sr")
    texts = [json.dumps(r, ensure_ascii=False) for r in corpus_rows(30, seed=5)]
    texts += [json.dumps(builtin_prompt_texts(lang).model_dump(exclude={"language", "quotes"}), ensure_ascii=False)
              for lang in ("zh", "en")]
    texts += [item_block(inst, i, lang) for i in inst.item_ids for lang in ("zh", "en")] * 3
    tok = train_tokenizer(texts, 700)
    base = random_model(tok, hidden_size=64, intermediate_size=128, layers=2, heads=4, max_position=2048, seed=3)
    base_dir, adapter_dir = root / "base", root / "adapter"
    base.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(11)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    tok.save_pretrained(adapter_dir)

    from care.model.prompts import PromptBuilder

    held = _sessions(2, seed=9)
    builder = PromptBuilder(tok, inst, PROMPT)
    check_inputs = [(e := builder.encode(s)).prefix + e.items["1"] for s in held]
    merge = merge_adapter(base_dir, adapter_dir, root / "merged", check_inputs, max_diff=1e-4)
    export = export_onnx(root / "merged", root / "onnx")
    parity = check_parity(root / "merged", root / "onnx", held, inst, PROMPT, max_logit_diff=1e-4,
                          max_score_diff=1e-4)
    metadata = {
        "data_version": "test", "git_commit": "0" * 40, "params_digest": "f" * 64, "base_model": "tiny-random",
        "finetune": "lora",
        "cv": {"mean": {"goal": {"pearson": 0.3, "spearman": 0.3, "mse": 1.0}},
               "std": {"goal": {"pearson": 0.05}},
               "baselines": {"counselor": {"goal": {"pearson": 0.2, "mse": 1.3}}}},
        "gate": {"passed": True}, "merge": merge, "export": export, "parity": parity,
        "scoring": {**PROMPT.model_dump(mode="json"), "languages": ["zh", "en"], "prompt_version": "1",
                    "readout": "expected", "grounded_quotes": True},
    }
    build_package(root / "package", root / "onnx", None, instrument_path("wai-sr"), metadata,
                  calibration=synthetic_calibration(inst))
    _BUILT[key] = {"root": root, "merge": merge, "export": export, "parity": parity, "tokenizer": tok,
                   "instrument": inst, "package": root / "package", "merged": root / "merged",
                   "adapter": adapter_dir, "base": base_dir, "held": held, "check_inputs": check_inputs}
    return _BUILT[key]


def synthetic_calibration(inst, seed: int = 0) -> dict:
    """A calibration from synthetic out-of-fold predictions (care.evaluation.intervals.calibrate)."""
    import random

    from care.evaluation.intervals import calibrate

    rng = random.Random(seed)
    folds = [{"predictions": {}, "spread": {}} for _ in range(2)]
    truth = {}
    for s in range(40):
        sid = f"cal{s}"
        truth[sid] = {i: rng.randint(1, 5) for i in inst.item_ids}
        folds[s % 2]["predictions"][sid] = {i: min(5.0, max(1.0, truth[sid][i] + rng.gauss(0, 0.8))) for i in inst.item_ids}
        folds[s % 2]["spread"][sid] = {i: rng.uniform(0.3, 1.2) for i in inst.item_ids}
    return calibrate(folds, truth, inst, [80, 90])["calibration"]


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


def test_merge_parity_and_adapter_effect(rel):
    assert rel["merge"]["kind"] == "lora"
    assert rel["merge"]["max_logit_diff"] < 1e-4
    assert rel["merge"]["adapter_effect"] > 1e-3  # the adapter really changes the logits
    assert (rel["merged"] / "model.safetensors").is_file()
    assert not (rel["merged"] / "adapter_config.json").exists()


def test_merge_over_threshold_says_by_how_much(rel, tmp_path):
    from care.errors import CareError
    from care.release import merge_adapter

    with pytest.raises(CareError, match=r"differ by [0-9.e-]+ \(threshold -1\)"):
        merge_adapter(rel["base"], rel["adapter"], tmp_path / "m", rel["check_inputs"][:1], max_diff=-1)
    assert not (tmp_path / "m").exists()


def test_full_finetune_is_copied(rel, tmp_path):
    from care.release import merge_adapter

    out = merge_adapter(rel["base"], rel["merged"], tmp_path / "full", [], max_diff=0)
    assert out["kind"] == "full"
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (rel["merged"] / "model.safetensors").read_bytes()


def test_export_parity_and_last_position_logits(rel):
    import onnx

    p = rel["parity"]
    assert p["max_logit_diff"] < 1e-4 and p["max_score_diff"] < 1e-4 and p["n_items"] == 24
    assert rel["export"]["dtype"] == "fp32" and rel["export"]["logits"] == "last_position"
    graph = onnx.load(str(rel["root"] / "onnx" / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_value == 1
    # eager attention fused per layer: no NaN guards over every (query, key) pair (the traced SDPA graph has them)
    ops = [n.op_type for n in graph.node]
    assert "IsNaN" not in ops and "Softmax" not in ops and ops.count("MultiHeadAttention") == 2  # 2 layers
    assert rel["export"]["attention"] == "MultiHeadAttention x2"


def test_parity_over_threshold_fails_with_numbers(rel):
    from care.errors import CareError
    from care.release import check_parity

    with pytest.raises(CareError, match=r"logit difference [0-9.e-]+ > -1"):
        check_parity(rel["merged"], rel["root"] / "onnx", rel["held"][:1], rel["instrument"], PROMPT,
                     max_logit_diff=-1, max_score_diff=1)


def test_package_contents_and_manifest(rel):
    from care.release.manifest import verify_package

    pkg = rel["package"]
    manifest = verify_package(pkg)
    assert {"model.onnx", "tokenizer.json", "instrument.yaml", "README.md", "config.json",
            "calibration.json"} <= set(manifest["files"])
    assert manifest["scoring"]["max_length"] == PROMPT.max_length and manifest["format"] == "care-release/1"
    card = (pkg / "README.md").read_text("utf-8")
    assert "never use it to make decisions" in card and "not** a diagnosis" in card
    assert "| this model |" in card and "baseline: counselor" in card and "lateness" in card


@pytest.mark.parametrize("damage", ["tamper", "missing", "extra"])
def test_damaged_package_is_refused(rel, tmp_path, damage):
    from care.errors import CareError
    from care.release.onnx_runtime import load_package

    pkg = tmp_path / "pkg"
    shutil.copytree(rel["package"], pkg)
    if damage == "tamper":
        data = bytearray((pkg / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0x01
        (pkg / "model.onnx").write_bytes(bytes(data))
        expect = "model.onnx: sha256"
    elif damage == "missing":
        (pkg / "tokenizer.json").unlink()
        expect = "tokenizer.json: missing"
    else:
        (pkg / "notes.txt").write_text("x")
        expect = "notes.txt: not in the manifest"
    with pytest.raises(CareError, match=expect):
        load_package(pkg)


@pytest.mark.parametrize("language", ["zh", "en"])
def test_package_tokenizer_matches_transformers(rel, language):
    from care.release.onnx_runtime import PackageTokenizer
    from care.model.prompts import PromptBuilder

    hf = rel["tokenizer"]
    pt = PackageTokenizer(rel["package"])
    messages = [{"role": "system", "content": "系统 sys"}, {"role": "user", "content": "Hello 你好 123\n\nx"}]
    for gen in (True, False):
        assert pt.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == \
            hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    assert pt.eos_token_id == hf.eos_token_id and pt.pad_token_id == hf.pad_token_id and len(pt) == len(hf)
    session = _sessions(1, seed=2, language=language)[0]
    a = PromptBuilder(pt, rel["instrument"], PROMPT).encode(session)
    b = PromptBuilder(hf, rel["instrument"], PROMPT).encode(session)
    assert a.prefix == b.prefix and a.items == b.items
    ids = a.prefix[:50] + [hf.eos_token_id]
    assert pt.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_package_calibration_is_read_from_checked_bytes(rel, tmp_path):
    from care.errors import CareError
    from care.release.calibration import load_calibration
    from care.release.manifest import read_manifest

    pkg = tmp_path / "pkg"
    shutil.copytree(rel["package"], pkg)
    manifest = read_manifest(pkg)
    cal = load_calibration(pkg, manifest, rel["instrument"])
    assert cal["levels"] == [80, 90] and set(cal["radius"]["items"]) == set(rel["instrument"].item_ids)
    (pkg / "calibration.json").write_text((pkg / "calibration.json").read_text("utf-8").replace("80", "81"), "utf-8")
    with pytest.raises(CareError, match="calibration.json: sha256 does not match the manifest"):
        load_calibration(pkg, manifest, rel["instrument"])
    assert load_calibration(pkg, {"files": {}}, rel["instrument"]) is None  # a package from before intervals


def test_grouped_query_qwen2_export_fuses_attention_and_matches_torch(tmp_path):
    """The real presets' shape of attention (grouped key/value heads; Qwen2's q/k/v biases; an architecture
    Optimum's ORT optimizer does not know): every layer fused, and a prefix pass then a left-padded
    two-row pass over its gathered key/values give PyTorch's logits."""
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from care.release import export_onnx
    from care.release.onnx_runtime import OnnxLM

    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    info = export_onnx(tmp_path / "m", tmp_path / "o")
    assert info["attention"] == "MultiHeadAttention x2" and info["optimize"] is None
    lm = OnnxLM(tmp_path / "o" / "model.onnx", threads=1)
    rng = np.random.RandomState(0)
    prefix, suffixes = rng.randint(3, 300, 30), [rng.randint(3, 300, 7), rng.randint(3, 300, 4)]
    _, past = lm.forward(prefix[None], np.ones((1, 30), np.int64), np.arange(30)[None], lm.empty_past(1))
    ids = np.zeros((2, 7), np.int64)
    mask = np.ones((2, 37), np.int64)
    positions = np.tile(30 + np.arange(7), (2, 1))
    ids[0], ids[1, 3:] = suffixes[0], suffixes[1]
    mask[1, 30:33], positions[1, :3], positions[1, 3:] = 0, 30, 30 + np.arange(4)
    logits, _ = lm.forward(ids, mask, positions, lm.select(past, np.array([0, 0])))
    with torch.no_grad():
        for row, suffix in enumerate(suffixes):
            full = torch.tensor(np.concatenate([prefix, suffix]))[None]
            assert np.abs(logits[row] - model(full).logits[0, -1].double().numpy()).max() < 1e-4
