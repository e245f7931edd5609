"""GPU checks of session packing that CPU tests cannot make (run where CUDA is present).

    python benchmarks/gpu_packing_check.py

1. The packed loss and LoRA gradients equal the per-item ones on CUDA (tiny preset, fp32, SDPA kernels of
   the GPU), and their difference under bf16 autocast.
2. `care.model.training.finetune` with `train.packing=session` and with `item` on CUDA: bf16 mixed precision
   through accelerate, a few steps each (loss, tokens/s).
Prints one JSON line per check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args(argv)

    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from care.model.presets import load_base, load_tokenizer, prepare_base
    from care.data.instrument import load_instrument
    from care.model.packing import pack_session, packed_loss, use_packed_attention
    from care.params import Params
    from care.model.prompts import PromptBuilder, PromptConfig, build_examples
    from care.data.synth import generate
    from care.model.training import collate, finetune, target_loss

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    params = Params()
    base, _ = prepare_base(params)
    tok = load_tokenizer(base)
    builder = PromptBuilder(tok, load_instrument("wai-sr"), PromptConfig.from_params(params.model))
    sessions, _ = generate(n_sessions=args.sessions, seed=3)
    examples, _ = build_examples(sessions, builder, "rationale")
    group = [e for e in examples if e.session_id == examples[0].session_id]

    for autocast in (False, True):
        model, _ = load_base(base, None, dev)
        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=list(params.lora.target_modules), init_lora_weights=False))
        model.eval()
        results = {}
        for layout in ("item", "session"):
            if layout == "session":
                use_packed_attention(model)
            model.zero_grad(set_to_none=True)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
                if layout == "session":
                    loss_sum, weight = packed_loss(model, pack_session(group), dev, 30.0)
                else:
                    loss_sum, weight = target_loss(model, {k: v.to(dev) for k, v in collate(group, tok.pad_token_id).items()}, 30.0)
            (loss_sum / weight).backward()
            results[layout] = (float(loss_sum.detach()), {n: p.grad.detach().float().clone()
                                                          for n, p in model.named_parameters() if p.grad is not None})
        (la, ga), (lb, gb) = results["item"], results["session"]
        scale = max(float(g.abs().max()) for g in ga.values())
        worst = max(float((ga[n] - gb[n]).abs().max()) for n in ga)
        print(json.dumps({"check": "packed_vs_item_gradients", "device": name,
                          "precision": "bf16 autocast" if autocast else "fp32", "loss_rel_diff": abs(la - lb) / abs(la),
                          "grad_max_abs_diff_rel": worst / scale, "lora_tensors": len(ga)}), flush=True)

    for packing in ("session", "item"):
        p = Params()
        p.train.packing = packing
        p.train.max_steps = 6
        with tempfile.TemporaryDirectory() as tmp:
            stats = finetune(base, examples, p, Path(tmp) / "out", desc=packing)
            saved = sorted(x.name for x in (Path(tmp) / "out").iterdir())
        print(json.dumps({"check": "finetune_bf16", "packing": packing, "device": name,
                          "steps": stats["steps"], "first_loss": stats["first_loss"], "final_loss": stats["final_loss"],
                          "train_tokens": stats["train_tokens"], "tokens_per_s": stats["tokens_per_s"],
                          "wall_s": stats["wall_s"], "saved": saved}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
