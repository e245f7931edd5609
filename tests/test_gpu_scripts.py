"""The prepared GPU commands at the tiny shape on CPU (docs/gpu.md): the side-by-side benchmark against the CARE
authors' recipe (benchmarks/peer_recipe.py), the end-to-end `care train` + `care score` run through the real CLI
(benchmarks/gpu_e2e.sh), the tied-embedding export's save of a graph protobuf will not size, and the fatbin
stripper that lets onnxruntime-gpu travel to a lent GPU."""

from __future__ import annotations

import json
import os
import struct
from datetime import date
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_peer_recipe_runs_every_row_and_prints_the_ratio(tmp_path):
    out = tmp_path / "peer.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peer_recipe.py"), "--shape", "tiny", "--device",
                           "cpu", "--rows", "peer,default,item_layout,item_shared_prefix", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio: default_vs_peer=")
    figures = json.loads(out.read_text("utf-8"))
    rows = figures["rows"]
    assert all(rows[r]["status"] == "done" and rows[r]["items_per_s"] > 0
               for r in ("peer", "default", "item_layout", "item_shared_prefix"))
    assert float(last.split("=")[1]) == pytest.approx(rows["default"]["items_per_s"] / rows["peer"]["items_per_s"],
                                                      abs=0.01)
    default = rows["default"]
    # what `care train --set model.preset=llama-3.1-8b-instruct --set model.base=...` resolves to from params.yaml
    assert default["packing"] == "session" and default["sessions_per_step"] == 4
    assert default["recipe"]["train.packing"].startswith("auto -> 'session'")
    assert rows["item_layout"]["packing"] == "item" and rows["item_layout"]["gradient_checkpointing"] is True
    assert rows["item_layout"]["shared_prefix"] is False and rows["item_shared_prefix"]["shared_prefix"] is True
    assert rows["item_shared_prefix"]["micro_batches_per_forward"] >= 1
    assert rows["default"]["fold_epoch_s"] == pytest.approx(630 * 12 / default["items_per_s"], rel=1e-2)


@pytest.mark.slow
def test_gpu_e2e_script_trains_registers_and_scores_on_cpu(tmp_path):
    out = tmp_path / "e2e.json"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_e2e.sh"), "--shape", "tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=1800, cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable})  # this venv's Python, not PATH's
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "gpu_e2e: ok"
    steps = json.loads(out.read_text("utf-8"))["steps"]
    assert [s for s in steps if steps[s]["status"] == "done"] == ["base", "corpus", "train", "models", "score"]
    train = steps["train"]
    assert "registered care-alliance-e2e version 1 in staging" in train["output_tail"]
    assert train["export"]["export"]["device"] == "cpu" and train["fits"]
    assert all(f["packing"] == "session" and f["sessions_per_step"] == 4 for f in train["fits"])
    assert "care-alliance-e2e: 1 version(s)" in steps["models"]["output_tail"]
    assert steps["score"]["corpus"]["sessions"] == 12 and steps["score"]["speed"]["sessions"] == 4


def test_a_graph_protobuf_cannot_size_is_saved_with_external_data(tmp_path, monkeypatch):
    """What a tied-embedding model over 2 GB meets in Optimum's post-processing (benchmarks/tied_export.py shows
    the real one): `ByteSize()` refuses, so the graph is saved with its tensors beside it, and it loads whole."""
    import numpy as np
    import onnx
    from google.protobuf.message import EncodeError
    from onnx import helper, numpy_helper

    from care.release import export

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    class Huge:  # what protobuf answers for a graph over 2 GB
        def ByteSize(self):  # noqa: N802 - protobuf's name
            raise EncodeError("Failed to serialize proto")

    assert export._fits_in_protobuf(model) and not export._fits_in_protobuf(Huge())
    monkeypatch.setattr(export, "_fits_in_protobuf", lambda m: False)
    path = tmp_path / "model.onnx"
    (tmp_path / "model.onnx_data").write_bytes(b"stale")  # what the exporter left: replaced, never appended to
    export._save_checked(model, path)
    assert (tmp_path / "model.onnx_data").stat().st_size == 64 * 4
    loaded = onnx.load(str(path))
    assert np.array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), numpy_helper.to_array(weight))


def test_fatbin_strip_zeroes_other_architectures_and_keeps_the_layout():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from strip_fatbin import MAGIC, strip

    def entry(arch: int, payload: bytes) -> bytes:
        header = struct.pack("<HHIQ", 2, 0, 64, len(payload)) + bytes(12) + struct.pack("<I", arch) + bytes(32)
        return header + payload

    entries = entry(80, b"A" * 32) + entry(90, b"B" * 32) + entry(120, b"C" * 16)
    blob = bytearray(b"elf..." + MAGIC + struct.pack("<HHQ", 1, 16, len(entries)) + entries + b"...tail")
    before = bytes(blob)
    zeroed, kept = strip(blob, {90})
    assert (zeroed, kept) == (48, 32) and len(blob) == len(before)
    assert b"B" * 32 in blob and b"A" not in blob[blob.find(MAGIC):] and b"C" * 16 not in blob
    assert blob.endswith(b"...tail") and blob.startswith(b"elf...")


def test_a_small_tied_model_exports_with_one_copy_of_its_embedding(tmp_path):
    """The logic of the tied export on a small model (under 2 GB: Optimum's own save): parity holds, and the
    ONNX graph carries the embedding matrix once."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.prompts import PromptConfig, item_block, render_transcript
    from care.model.tiny import train_tokenizer
    from care.params import ModelParams
    from care.release import check_parity, export_onnx

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from random_llama import random_llama

    instrument = load_instrument("wai-sr")
    sessions, _ = generate(n_sessions=6, language="zh", seed=7, mean_utterances=10)
    tok = train_tokenizer([render_transcript(s) for s in sessions] + [item_block(instrument, i, "zh")
                                                                      for i in instrument.item_ids] + ["0123456789"], 600)
    model = random_llama("tiny", "cpu", torch.float32, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "merged")
    tok.save_pretrained(tmp_path / "merged")
    info = export_onnx(tmp_path / "merged", tmp_path / "onnx", device="cpu", optimize=None)
    assert info["tied_embeddings"] is True
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    embedding = model.model.embed_tokens.weight.detach().numpy()
    copies = sum(1 for t in graph.graph.initializer if tuple(t.dims) in (embedding.shape, embedding.shape[::-1])
                 and (np.allclose(a := numpy_helper.to_array(t), embedding) or np.allclose(a.T, embedding)))
    assert copies == 1
    config = PromptConfig.from_params(ModelParams(max_length=1024, target_tokens=64, prompt_date=date(2024, 7, 26)))
    parity = check_parity(tmp_path / "merged", tmp_path / "onnx", sessions[:1], instrument, config,
                          max_logit_diff=1e-3, max_score_diff=1e-3)
    assert parity["max_logit_diff"] < 1e-3
