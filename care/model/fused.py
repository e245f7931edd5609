"""Fused kernels for the fine-tuning step (liger-kernel, Triton): RMSNorm, SwiGLU and RoPE in one kernel each, and
the LM head's cross-entropy at the target positions fused with the head (no float32 logits).

`train.fused_kernels`: `none`, `liger`, or `auto` (liger on one CUDA device when it is installed and knows the
architecture; never on CPU, where Triton does not run). The kernels patch one model instance's norms and MLPs;
RoPE is a module-level function of the architecture's modeling file, so `fused_kernels` swaps it for the duration
of the fine-tune only (ONNX export and scoring, in the same process, see the original).
"""

from __future__ import annotations

import importlib
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass

from care.errors import CareError
from care.params import FitParams, Params

SUPPORTED = {"llama": "transformers.models.llama.modeling_llama", "qwen2": "transformers.models.qwen2.modeling_qwen2"}


@dataclass
class Fused:
    """Which fused kernels a fine-tune uses, and why."""

    kind: str  # none | liger
    reason: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "reason": self.reason}


def choose_fused(params: Params | FitParams, model_type: str | None, device_type: str, processes: int) -> Fused:
    """Decide `train.fused_kernels` for this model and device (auto: liger where it runs and is installed).
    `model_type` None: not known yet (the preflight, before the base is loaded)."""
    asked = params.train.fused_kernels
    if asked == "none":
        return Fused("none", "train.fused_kernels=none")
    problems = []
    if device_type != "cuda":
        problems.append("no CUDA device (Triton kernels)")
    if model_type is not None and model_type not in SUPPORTED:
        problems.append(f"architecture {model_type!r} (supported: {', '.join(SUPPORTED)})")
    if processes > 1:
        problems.append(f"{processes} processes (the fused loss reads the model's inner modules, which DDP wraps)")
    if importlib.util.find_spec("liger_kernel") is None:
        problems.append("liger-kernel is not installed")
    if asked == "liger" and problems:
        raise CareError("train.fused_kernels=liger cannot run here: " + "; ".join(problems))
    if problems:
        return Fused("none", "auto: " + "; ".join(problems))
    return Fused("liger", "train.fused_kernels=liger" if asked == "liger" else "auto: CUDA, one process, installed")


def apply_liger(model) -> None:
    """Patch this model instance's RMSNorms and MLPs with liger's kernels."""
    from liger_kernel.transformers.monkey_patch import _patch_rms_norm_module, _patch_swiglu_module
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    base = _decoder(model)
    _patch_rms_norm_module(base.norm)
    for layer in base.layers:
        _patch_swiglu_module(layer.mlp, LigerSwiGLUMLP)
        _patch_rms_norm_module(layer.input_layernorm)
        _patch_rms_norm_module(layer.post_attention_layernorm)


@contextmanager
def liger_rope(model_type: str):
    """The architecture's `apply_rotary_pos_emb` replaced by liger's for the duration of the block."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    module = importlib.import_module(SUPPORTED[model_type])
    original = module.apply_rotary_pos_emb
    module.apply_rotary_pos_emb = liger_rotary_pos_emb
    try:
        yield
    finally:
        module.apply_rotary_pos_emb = original


def fused_head_loss(hidden, head_weight, next_labels, keep, score_weight: float):
    """The weighted target cross-entropy sum of `care.model.loss.weighted_ce_sum`, with the LM head fused into the
    loss: every target once, plus each item's score digit (`score_weight` - 1) times more."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    from care.model.loss import token_weights

    targets = next_labels[keep]
    rows = hidden[keep]
    total = liger_fused_linear_cross_entropy(rows, head_weight, targets, reduction="sum")
    if score_weight != 1.0:
        digits = (token_weights(next_labels, score_weight)[keep] != 1.0).nonzero(as_tuple=True)[0]
        total = total + (score_weight - 1.0) * liger_fused_linear_cross_entropy(rows[digits], head_weight,
                                                                                 targets[digits], reduction="sum")
    return total


def _decoder(model):
    """The decoder (embeddings, layers, final norm) inside a causal LM, under any peft or DDP wrapping."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return getattr(base, base.base_model_prefix)


def head_of(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module", base).get_output_embeddings()


def decoder_of(model):
    return _decoder(model)
