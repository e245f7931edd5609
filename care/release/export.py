"""ONNX export of a merged model (Optimum) and the ONNX Runtime vs PyTorch parity check.

`export_onnx` loads the merged model with eager attention and exports it with Optimum
(`onnx_export_from_model`, task "text-generation-with-past"; loading it ourselves keeps it offline), fp32 on
CPU, fp16 on CUDA; models over 2 GB get external data files (Optimum writes `model.onnx_data`). Eager
attention, not SDPA: the traced SDPA graph rebuilds a boolean mask and NaN guards (Where, IsNaN) over every
(query, key) pair in every layer, which made ONNX Runtime's passes about twice as slow on CPU; the eager
graph builds the additive mask once per pass. The graph is then cut so the LM head runs at the last
position only: scoring reads logits only there, and for a small model the head over a whole transcript
costs as much as the layers. In fp32 (the CPU export) each layer's attention then becomes one ONNX Runtime
`MultiHeadAttention` node (`fuse_attention`: about 15% less time on CPU, the same numbers); fp16 keeps the
eager nodes, which every provider runs. A model whose LM head is its input embedding (tied: Llama-3.2, Qwen2.5 up
to 3B) has Optimum keep one copy of the matrix; Optimum's own save of that result asks protobuf for the size of a
graph over 2 GB, which protobuf refuses, so `export_onnx` saves such graphs with external data itself
(`_save_checked`, standing in for Optimum's `check_and_save_model` during the export). `check_parity` compares ONNX Runtime (the package's scoring path,
with the shared transcript cache) with PyTorch (each item's full prompt) on held sessions and fails by how
much when over threshold.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import warnings
from pathlib import Path
from typing import Any

from care.errors import CareError
from care.fsutil import atomic_dir
from care.data.instrument import Instrument
from care.data.schema import Session
from care.model.prompts import PromptBuilder, PromptConfig

MODEL_FILE = "model.onnx"


def keep_last_logits(model_path: str | Path) -> None:
    """Rewrite the graph in place so `logits` is (batch, 1, vocab): the LM head sees the last position only."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    node = producer.get("logits")
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        raise CareError(f"{model_path}: cannot find the LM head producing 'logits'")
    slot = 0  # MatMul(hidden, W) / Gemm(hidden, W): the activation comes first
    if node.input[slot] in initializers:
        raise CareError(f"{model_path}: the LM head's first input is a weight, not the hidden states")
    hidden = node.input[slot]
    names = {"starts": [-1], "ends": [2**62], "axes": [1]}
    for key, value in names.items():
        graph.initializer.append(helper.make_tensor(f"care_last_{key}", TensorProto.INT64, [1], value))
    sliced = f"{hidden}_care_last"
    graph.node.insert(list(graph.node).index(node),
                      helper.make_node("Slice", [hidden, "care_last_starts", "care_last_ends", "care_last_axes"],
                                       [sliced], name="care_last_position"))
    node.input[slot] = sliced
    for out in graph.output:
        if out.name == "logits":
            dim = out.type.tensor_type.shape.dim[1]
            dim.Clear()
            dim.dim_value = 1
    onnx.save(model, str(model_path))


def fuse_attention(model_path: str | Path, num_heads: int) -> int:
    """Rewrite every eager attention block in place as one ONNX Runtime `com.microsoft.MultiHeadAttention` node;
    returns how many were fused (every layer's, or none: an unknown pattern raises).

    The block is MatMul(q, Transpose(k)) -> Mul(scale) -> Add(mask) -> Softmax -> MatMul(., v) -> Transpose; the
    fused node takes q as (batch, seq, heads x dim), k and v as they are (batch, heads, total, dim: the present
    key/values, after any repeat for grouped heads) and the additive mask as attention bias, and computes each
    (row, head) score block and its softmax in one pass: fewer passes over the scores than the six separate
    nodes, and no per-layer copy of the mask (eager's `mask[..., :total]` slice). Float32 only (the CPU kernel).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name: t for t in graph.initializer}

    def scalar(name: str) -> float | None:
        node = producer.get(name)
        if name in initializers:
            value = numpy_helper.to_array(initializers[name])
        elif node is not None and node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
        else:
            return None
        return float(value) if value.size == 1 else None

    def perm(node) -> list[int]:
        return [int(x) for a in node.attribute if a.name == "perm" for x in a.ints]

    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    dead, new_nodes = [], []
    for sm in softmaxes:
        add = producer.get(sm.input[0])
        mul = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        mm = producer.get(mul.input[0]) if mul is not None and mul.op_type in ("Mul", "Div") else None
        kt = producer.get(mm.input[1]) if mm is not None and mm.op_type == "MatMul" else None
        probs, casts = sm.output[0], []
        while len(consumers.get(probs, [])) == 1 and _is_float_noop(consumers[probs][0]):  # unoptimised graph
            casts.append(consumers[probs][0])
            probs = casts[-1].output[0]
        out = consumers.get(probs, [])
        pv = out[0] if len(out) == 1 and out[0].op_type == "MatMul" and out[0].input[0] == probs else None
        after = consumers.get(pv.output[0], []) if pv is not None else []
        tr = after[0] if len(after) == 1 and after[0].op_type == "Transpose" else None
        factor = scalar(mul.input[1]) if mul is not None else None
        if (kt is None or kt.op_type != "Transpose" or perm(kt) != [0, 1, 3, 2] or tr is None
                or perm(tr) != [0, 2, 1, 3] or not factor):
            raise CareError(f"{model_path}: attention block at {sm.name!r} is not the eager pattern; cannot fuse it")
        scale = factor if mul.op_type == "Mul" else 1.0 / factor
        mask = add.input[1]
        sliced = producer.get(mask)
        if sliced is not None and sliced.op_type == "Slice" and len(consumers[mask]) == 1:
            mask = sliced.input[0]  # keys = past + new tokens = the whole mask: the slice only copies it
            dead.append(sliced)
        name = sm.name.rsplit("/", 1)[0] + "/care_mha"
        new_nodes.append((tr, [
            helper.make_node("Transpose", [mm.input[0]], [f"{name}_qt"], perm=[0, 2, 1, 3], name=f"{name}_qt"),
            helper.make_node("Reshape", [f"{name}_qt", "care_mha_bsd"], [f"{name}_q"], name=f"{name}_q"),
            # output (batch, seq, heads x dim) under the Transpose's name: its only consumer reshapes to that
            helper.make_node("MultiHeadAttention", [f"{name}_q", kt.input[0], pv.input[1], "", "", mask],
                             [tr.output[0]], domain="com.microsoft", num_heads=int(num_heads), scale=float(scale),
                             name=name)]))
        dead += [kt, mm, mul, add, sm, *casts, pv, tr]
    if not new_nodes:
        raise CareError(f"{model_path}: no attention block found to fuse")
    graph.initializer.append(helper.make_tensor("care_mha_bsd", onnx.TensorProto.INT64, [3], [0, 0, -1]))
    for tr, nodes in new_nodes:  # in the Transpose's place: after every producer of q, k, v and the mask
        at = list(graph.node).index(tr)
        for k, node in enumerate(nodes):
            graph.node.insert(at + k, node)
    for node in dead:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]  # the slices' bounds
    for t in unused:
        graph.initializer.remove(t)
    stale = {n.output[0] for _, nodes in new_nodes for n in nodes[-1:]}
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(model_path))
    return len(new_nodes)


def _fits_in_protobuf(model) -> bool:
    """Whether a graph serialises as one protobuf (under 2 GB); protobuf refuses even to size a larger one."""
    import onnx
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize() < onnx.checker.MAXIMUM_PROTOBUF
    except (EncodeError, ValueError):
        return False


def _save_checked(model, save_path) -> None:
    """Optimum's `check_and_save_model`, for graphs of any size: one over protobuf's 2 GB (whose size protobuf will
    not even compute) is saved with its tensors in `<name>_data` beside it and checked from the file."""
    import onnx
    from optimum.onnx import graph_transformations

    if _fits_in_protobuf(model):
        return _OPTIMUM_SAVE(model, save_path)
    path = Path(save_path)
    data = path.with_name(path.name + "_data")
    for old in (path, data):  # the graph in memory holds every tensor; external data is appended to, never replaced
        old.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              convert_attribute=True, size_threshold=100)
    onnx.checker.check_model(str(path))
    graph_transformations.logger.info(f"saved {path.name} with external data {data.name}")


_OPTIMUM_SAVE = None  # Optimum's own, while `_large_graph_saves` stands in for it


@contextmanager
def _large_graph_saves():
    """Optimum's post-processing (tied-weight deduplication) saving through `_save_checked`."""
    global _OPTIMUM_SAVE
    from optimum.onnx import graph_transformations

    _OPTIMUM_SAVE = original = graph_transformations.check_and_save_model
    graph_transformations.check_and_save_model = _save_checked
    try:
        yield
    finally:
        graph_transformations.check_and_save_model = original


def export_onnx(merged_dir: str | Path, out_dir: str | Path, device: str = "cpu", last_logits_only: bool = True,
                optimize: str | None = "auto", dtype: str | None = None) -> dict[str, Any]:
    """Export `merged_dir` to `out_dir` (model.onnx [+ model.onnx_data] + tokenizer files), atomically.

    `dtype` "fp32" or "fp16"; None: fp16 on CUDA, fp32 on CPU (an fp16 export on CPU is what a CPU-only
    machine can check of the GPU export: benchmarks/gpu_pipeline.py --shape tiny).

    `optimize` is Optimum's ONNX Runtime optimization level ("O1"/"O2"; None: none). "auto" = "O2" on CPU
    (fused RMSNorm etc., about 10% faster, same logits) for the architectures Optimum's optimizer knows (llama,
    not qwen2), else none; none on CUDA.
    """
    if device not in ("cpu", "cuda"):
        raise CareError(f"unknown export device {device!r} (cpu or cuda)")
    if not any(Path(merged_dir).glob("model*.safetensors")):  # no pickled .bin fallback
        raise CareError(f"{merged_dir}: no model*.safetensors (only safetensors weights are loaded)")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import torch
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils.save_utils import maybe_load_preprocessors
    from transformers import AutoModelForCausalLM

    dtype = dtype or ("fp16" if device == "cuda" else "fp32")
    if dtype not in ("fp16", "fp32"):
        raise CareError(f"unknown export dtype {dtype!r} (fp16 or fp32)")
    if optimize == "auto":  # Optimum's ORT optimizer knows some architectures only (llama yes, qwen2 no)
        optimize = "O2" if device == "cpu" and dtype == "fp32" and _ort_optimizable(merged_dir) else None
    with atomic_dir(out_dir) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes the exporter handles itself
        torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(merged_dir), use_safetensors=True, dtype=torch_dtype,
                                                     attn_implementation="eager", local_files_only=True)
        model = model.to(device).eval()
        model.config.use_cache = True
        heads = model.config.get_text_config().num_attention_heads
        tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
        with _large_graph_saves():
            onnx_export_from_model(model, str(tmp), task="text-generation-with-past", device=device,
                                   optimize=optimize, do_validation=False,
                                   preprocessors=maybe_load_preprocessors(str(merged_dir)))
        del model
        if not (tmp / MODEL_FILE).is_file():
            raise CareError(f"export of {merged_dir} wrote no {MODEL_FILE}")
        if last_logits_only:
            keep_last_logits(tmp / MODEL_FILE)
        fused = fuse_attention(tmp / MODEL_FILE, heads) if dtype == "fp32" else 0
        files = sorted(p.name for p in tmp.iterdir())
    size = sum((Path(out_dir) / f).stat().st_size for f in files if f.startswith("model.onnx"))
    return {"dtype": dtype, "device": device, "optimize": optimize, "files": files, "onnx_bytes": size,
            "external_data": any(f != MODEL_FILE and f.startswith("model.onnx") for f in files),
            "logits": "last_position" if last_logits_only else "all_positions", "tied_embeddings": tied,
            "attention": f"MultiHeadAttention x{fused}" if fused else "eager"}


def _is_float_noop(node) -> bool:
    """A Cast to float32 or an Identity: what a float32 graph carries from `softmax(dtype=float32).to(dtype)`."""
    from onnx import TensorProto

    if node.op_type == "Identity":
        return True
    return node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)


def _ort_optimizable(model_dir: str | Path) -> bool:
    import json

    from optimum.onnxruntime.utils import ORTConfigManager

    model_type = json.loads((Path(model_dir) / "config.json").read_text("utf-8")).get("model_type")
    try:
        ORTConfigManager.check_optimization_supported_model(model_type, None)
    except NotImplementedError:
        return False
    return True


def _torch_answer_logits(model, prompts: list[list[int]], device):
    import torch

    with torch.inference_mode():
        return torch.stack([model(input_ids=torch.tensor([p], device=device), logits_to_keep=1).logits[0, -1].float().cpu()
                            for p in prompts]).double().numpy()


def check_parity(merged_dir: str | Path, onnx_dir: str | Path, sessions: list[Session], instrument: Instrument,
                 config: PromptConfig, *, max_logit_diff: float, max_score_diff: float, device: str = "cpu",
                 batch_size: int = 16, torch_device: str | None = None) -> dict[str, Any]:
    """Max |logit| and |expected score| differences, ONNX Runtime (shared cache) vs PyTorch (full prompts).

    Also checks that the package tokenizer (tokenizers + jinja2) gives the same prompt ids as transformers.
    `device` runs ONNX Runtime; PyTorch (float32) runs on `torch_device` (default: the same).
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from care.evaluation.readout import digit_distribution
    from care.release.onnx_runtime import answer_logits, open_model_dir

    if not sessions:
        raise CareError("parity check needs at least one session")
    pkg = open_model_dir(onnx_dir, instrument, config, device=device)
    hf_builder = PromptBuilder(AutoTokenizer.from_pretrained(str(merged_dir)), instrument, config)
    tdev = torch.device(torch_device or ("cuda" if device == "cuda" else "cpu"))
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32, use_safetensors=True).to(tdev).eval()
    points = np.asarray(instrument.scale.points, dtype=np.float64)

    def expected(logits):
        return digit_distribution(logits, pkg.builder.digit_ids) @ points

    logit_diff = score_diff = 0.0
    n_items = 0
    for session in sessions:
        enc, hf_enc = pkg.builder.encode(session), hf_builder.encode(session)
        if enc.prefix != hf_enc.prefix or enc.items != hf_enc.items:
            raise CareError(f"parity failed: session={session.session_id}: package tokenizer ids differ from transformers'")
        items, ort_logits = answer_logits(pkg, session, batch_size)
        pt_logits = _torch_answer_logits(model, [enc.prefix + enc.items[i] for i in items], tdev)
        logit_diff = max(logit_diff, float(np.abs(ort_logits - pt_logits).max()))
        score_diff = max(score_diff, float(np.abs(expected(ort_logits) - expected(pt_logits)).max()))
        n_items += len(items)
    result = {"max_logit_diff": logit_diff, "max_score_diff": score_diff, "n_sessions": len(sessions),
              "n_items": n_items, "device": device, "torch_device": str(tdev),
              "providers": pkg.lm.session.get_providers()}
    over = []
    if not logit_diff <= max_logit_diff:
        over.append(f"max next-token logit difference {logit_diff:.3g} > {max_logit_diff:.3g}")
    if not score_diff <= max_score_diff:
        over.append(f"max expected-score difference {score_diff:.3g} > {max_score_diff:.3g}")
    if over:
        raise CareError(f"ONNX parity failed on {len(sessions)} session(s) / {n_items} item(s): " + "; ".join(over))
    return result
