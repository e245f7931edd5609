"""The CARE authors' recipe and this project's fine-tune side by side: one process, the same weights, the same examples.

    python benchmarks/peer_recipe.py --shape 8b --out peer_8b.json          # Llama-3.1-8B's shape, on a GPU
    python benchmarks/peer_recipe.py --shape tiny --device cpu              # the logic in seconds (the test suite)

Rows (`--rows`, in this order):
  peer         the authors' LoRA recipe (LLaMA-Factory) written out plainly in transformers + PEFT: LoRA r16 on the
               seven projections, dropout 0 (its default), float32 adapters under bf16 autocast, one full transcript
               per item, Hugging Face's full-vocabulary loss (`labels=`), batch 6, gradient checkpointing on
  default      this project's fine-tune with the defaults a real preset resolves to: params.yaml with
               `model.preset=llama-3.1-8b-instruct` and `model.base=<the weights>`, nothing else, through
               `care.model.launch.run_finetune` (the code path of `care train`)
  item_layout  the previous default for a real preset: item layout, checkpointing on (which then turned the shared
               prefix off), float32 adapters under autocast, LoRA dropout 0.05, no fused kernels
  session_checkpointed  the session layout with checkpointing forced on (the fallback on a smaller GPU)
  item_shared_prefix    the item layout with the real preset's other defaults: its shared prefix runs each
               micro-batch (one session's items) packed, as many a forward as the memory allows

A randomly initialised model of the shape (benchmarks/random_llama.py) with a small tokenizer trained here stands in
for the weights; synthetic sessions are lengthened to `--transcript-tokens`. Each row runs a warm-up step, then its
timed steps; it prints items/s, the fold-epoch seconds at that rate (630 sessions x 12 items) and the peak GPU memory,
writes the rows as JSON (`--out`), and ends with `ratio: default_vs_peer=X.XX` (items/s of `default` over `peer`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("peer", "default", "item_layout", "session_checkpointed", "item_shared_prefix")
FOLD_ITEMS = 630 * 12
PEER_BATCH = 6
SETTINGS = {"8b": dict(tokens=1310, sessions=12, peer_batches=4, steps=3),
            "1b": dict(tokens=1310, sessions=12, peer_batches=4, steps=3),
            "tiny": dict(tokens=160, sessions=8, peer_batches=3, steps=3)}
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SETTINGS), default="8b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    ap.add_argument("--base", type=Path, default=None, help="a base of the shape already saved (else built here)")
    ap.add_argument("--transcript-tokens", type=int, default=None)
    ap.add_argument("--deadline-s", type=float, default=None, help="skip rows that would start after this")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows_asked = [r.strip() for r in args.rows.split(",") if r.strip()]
    if set(rows_asked) - set(ROWS):
        ap.error(f"unknown rows {sorted(set(rows_asked) - set(ROWS))} (known: {', '.join(ROWS)})")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    settings = dict(SETTINGS[args.shape])
    settings["tokens"] = args.transcript_tokens or settings["tokens"]
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="care-peer-"))
    figures: dict = {"shape": args.shape, "device": args.device, "settings": settings, "rows": {}}
    try:
        base = args.base or _build_base(args.shape, args.device, work / "base")
        examples, mean_prefix = _examples(base, settings)
        figures["examples"] = {"items": len(examples), "mean_transcript_tokens": round(mean_prefix, 1)}
        for name in rows_asked:
            if args.deadline_s and time.monotonic() - t0 > args.deadline_s:
                figures["rows"][name] = {"status": "skipped", "reason": "deadline"}
                continue
            if args.device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                row = _peer(base, examples, settings, args.device) if name == "peer" else \
                    _care(base, examples, settings, name, work)
            except Exception as exc:  # noqa: BLE001 - the other rows still run; the JSON says what failed
                traceback.print_exc()
                figures["rows"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda" else None
            row["fold_epoch_s"] = round(FOLD_ITEMS / row["items_per_s"], 1)
            figures["rows"][name] = {"status": "done", **row}
            print(f"{name}: {row['items_per_s']:.2f} items/s, fold epoch {row['fold_epoch_s']:.0f} s, "
                  f"peak {row['peak_gpu_gib']} GiB", flush=True)
            _save(args.out, figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    done = figures["rows"]
    ratio = None
    if done.get("default", {}).get("status") == "done" and done.get("peer", {}).get("status") == "done":
        ratio = done["default"]["items_per_s"] / done["peer"]["items_per_s"]
        for name, row in done.items():
            if row.get("status") == "done":
                row["vs_peer"] = round(row["items_per_s"] / done["peer"]["items_per_s"], 2)
    figures["default_vs_peer"] = round(ratio, 2) if ratio else None
    _save(args.out, figures)
    print(f"ratio: default_vs_peer={ratio:.2f}" if ratio else "ratio: default_vs_peer=unavailable")
    return 0 if ratio else 1


def _save(out: Path | None, figures: dict) -> None:
    if out:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(figures, indent=2) + "\n", "utf-8")
        os.replace(tmp, out)


def _build_base(shape: str, device: str, out: Path) -> Path:
    """A random model of `shape` with a tokenizer trained on synthetic transcripts and the instrument's wording."""
    import torch

    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.prompts import item_block, render_transcript
    from care.model.tiny import train_tokenizer
    from random_llama import random_llama

    instrument = load_instrument("wai-sr")
    corpus, _ = generate(n_sessions=60, language="zh", seed=7)
    texts = [render_transcript(s) for s in corpus] + [item_block(instrument, i, "zh") for i in instrument.item_ids]
    tok = train_tokenizer(texts + ["0123456789\n"] * 10, 2048)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = random_llama(shape, device, dtype, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _params(base: Path, overrides: list[str]):
    """The shipped params.yaml with a real preset on `base`, plus `overrides`: what `care train --set ...` runs."""
    from care.params import load_params

    return load_params(ROOT / "params.yaml", ["model.preset=llama-3.1-8b-instruct", f"model.base={base}", *overrides])


def _examples(base: Path, settings: dict):
    """Rationale-target examples of synthetic sessions whose transcripts are about `tokens` long."""
    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.presets import load_tokenizer
    from care.model.prompts import PromptBuilder, PromptConfig, build_examples
    from bench_sessions import lengthen

    p = _params(base, [])
    builder = PromptBuilder(load_tokenizer(base), load_instrument(p.data.instrument), PromptConfig.from_params(p.model))
    plain, _ = generate(n_sessions=settings["sessions"], language="zh", seed=11, mean_utterances=78)
    mean = 0.0
    chars = 20
    for _ in range(2):  # scale the utterance length once from a first measurement
        sessions = lengthen(plain, 78, max(2, chars), 11)
        mean = sum(len(builder.encode(s).prefix) for s in sessions) / len(sessions)
        chars = round(chars * settings["tokens"] / mean)
    examples, _ = build_examples(sessions, builder, "rationale")
    return examples, mean


def _peer(base: Path, examples: list, settings: dict, device: str) -> dict:
    """The authors' recipe, plainly: what LLaMA-Factory's LoRA run does per micro-batch."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from care.model.item_layout import collate
    from care.model.presets import load_tokenizer

    cuda = device == "cuda"
    pad = load_tokenizer(base).pad_token_id
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa").to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)  # float32 adapters (peft's autocast_adapter_dtype)
    model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [examples[k:k + PEER_BATCH] for k in range(0, len(examples), PEER_BATCH)][:settings["peer_batches"]]
    items = 0
    started = None
    for k, group in enumerate(batches):
        if k == 1:
            _sync(device)
            started = time.perf_counter()
        batch = {key: v.to(device) for key, v in collate(group, pad).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        items += len(group) if k >= 1 else 0
    _sync(device)
    seconds = time.perf_counter() - started
    del model, optimizer
    return {"items_per_s": round(items / seconds, 3), "timed_items": items, "seconds": round(seconds, 2),
            "recipe": "LoRA r16 x7 projections, dropout 0, float32 adapters under bf16 autocast, full transcript "
                      "per item, full-vocabulary loss, batch 6, checkpointing on"}


CARE_ROWS = {
    "default": [],
    "item_layout": ["train.packing=item", "model.gradient_checkpointing=true", "train.adapter_dtype=float32",
                    "lora.dropout=0.05", "train.fused_kernels=none", "train.share_prefix=false"],
    "session_checkpointed": ["model.gradient_checkpointing=true"],
    "item_shared_prefix": ["train.packing=item"],
}


def _care(base: Path, examples: list, settings: dict, name: str, work: Path) -> dict:
    """This project's fine-tune through the code path of `care train`, timed after its first step."""
    from care.model.launch import run_finetune

    params = _params(base, [f"train.max_steps={settings['steps']}", *CARE_ROWS[name]])
    stats = run_finetune(base, examples, params, work / f"adapter-{name}", desc=name)
    return {"items_per_s": stats["items_per_s_after_first"], "timed_items": stats["items"],
            "seconds": stats["wall_s"], "packing": stats["packing"], "sessions_per_step": stats["sessions_per_step"],
            "sessions_per_forward": stats["sessions_per_forward"], "shared_prefix": stats["shared_prefix"],
            "micro_batches_per_forward": stats["micro_batches_per_forward"],
            "gradient_checkpointing": stats["gradient_checkpointing"], "precision": stats["precision"],
            "fused_kernels": stats["fused_kernels"], "memory": stats["memory"], "recipe": stats["recipe"],
            "first_loss": stats["first_loss"]}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
