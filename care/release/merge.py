"""Merge a LoRA adapter into its base, in float32 (never quantized), and prove the merge changed nothing.

The merged model's next-token logits on a few held prompts must match the adapter-wrapped model's within
`max_diff`; otherwise CareError says by how much. A full fine-tune needs no merge: its directory is copied.
The output (safetensors weights + tokenizer) is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from care.errors import CareError
from care.fsutil import atomic_dir


def _next_token_logits(model, prompts: list[list[int]]):
    import torch

    rows = []
    with torch.inference_mode():
        for ids in prompts:
            out = model(input_ids=torch.tensor([ids]), logits_to_keep=1)
            rows.append(out.logits[0, -1].float())
    return torch.stack(rows)


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path,
                  check_inputs: list[list[int]], max_diff: float) -> dict[str, Any]:
    """Merge `adapter_dir` into `base_dir` (float32) and save to `out_dir`; returns the parity numbers.

    `adapter_dir` holding a full model (no adapter_config.json) is copied as is ("kind": "full").
    """
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        if not (adapter_dir / "config.json").is_file():
            raise CareError(f"{adapter_dir}: neither a LoRA adapter nor a model directory")
        if not any(adapter_dir.glob("model*.safetensors")):
            raise CareError(f"{adapter_dir}: no model*.safetensors (only safetensors weights are loaded)")
        with atomic_dir(out_dir) as tmp:
            shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
        return {"kind": "full", "max_logit_diff": 0.0, "n_prompts": 0}
    if not (adapter_dir / "adapter_model.safetensors").is_file():  # else peft would fall back to pickled .bin weights
        raise CareError(f"{adapter_dir}: no adapter_model.safetensors (only safetensors adapters are loaded)")
    if not check_inputs:
        raise CareError("merge parity needs at least one held prompt")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()
    wrapped = _next_token_logits(model, check_inputs)
    with model.disable_adapter():
        base_logits = _next_token_logits(model, check_inputs)
    merged = model.merge_and_unload().eval()
    merged_logits = _next_token_logits(merged, check_inputs)
    diff = float((merged_logits - wrapped).abs().max())
    effect = float((wrapped - base_logits).abs().max())
    if not diff <= max_diff:  # NaN fails too
        raise CareError(f"merge parity failed: merged vs adapter next-token logits differ by {diff:.3g} "
                        f"(threshold {max_diff:.3g}) on {len(check_inputs)} held prompt(s)")
    tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"kind": "lora", "max_logit_diff": diff, "adapter_effect": effect, "n_prompts": len(check_inputs)}
