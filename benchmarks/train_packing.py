"""Training cost per epoch of the two layouts: `item` (one example per (session, item)) vs `session`
(one packed sequence per session, the transcript once).

    python benchmarks/train_packing.py [--sessions 24] [--utterances 78] [--chars 28] [--threads N]
    python benchmarks/train_packing.py --llama8b [--sessions 8] [--transcript-tokens 1500]   # needs CUDA

CPU (default): the tiny preset fine-tunes one epoch (LoRA, the default params) on synthetic sessions
lengthened to CounselingWAI size (about `--utterances` utterances of about `--chars` characters; the
context is widened so no transcript is cut), once per layout, each in its own process (clean peak RSS):
`item` with every example encoded in full, `item+share_prefix` (micro-batches of 6 of one session's
items, each run packed behind its transcript), and `session`. `--llama8b`: a randomly initialised
Llama-3.1-8B-shaped model in bf16 on the GPU (SDPA, LoRA r16, gradient checkpointing), random token ids
at realistic lengths; tokens/s and peak GPU memory per layout.

Prints a JSON line per layout; the last line is `speedup: X.Xx` (item wall time / session wall time).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = {"item": ("item", False), "item+share_prefix": ("item", True), "session": ("session", False)}


def cpu_layout(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from care.model.presets import load_tokenizer, prepare_base
    from care.data.instrument import load_instrument
    from care.params import Params
    from care.model.prompts import PromptBuilder, PromptConfig, build_examples
    from care.data.synth import generate
    from care.model.training import finetune
    from bench_sessions import lengthen

    packing, share = LAYOUTS[args.layout]
    params = Params()
    params.train.packing = packing
    params.train.share_prefix = share
    params.train.epochs = 1
    params.model.max_length = args.max_length
    sessions, _ = generate(n_sessions=args.sessions, seed=1, mean_utterances=args.utterances)
    sessions = lengthen(sessions, args.utterances, args.chars, seed=1)
    base, _ = prepare_base(params)
    builder = PromptBuilder(load_tokenizer(base), load_instrument(params.data.instrument),
                            PromptConfig.from_params(params.model))
    examples, ex_stats = build_examples(sessions, builder, "rationale")
    prefix_tokens = sum(len(builder.encode(s).prefix) for s in sessions) / len(sessions)
    with tempfile.TemporaryDirectory() as tmp:
        stats = finetune(base, examples, params, Path(tmp) / "out", desc=args.layout)
    return {
        "layout": args.layout, "device": "cpu", "threads": torch.get_num_threads(), "sessions": len(sessions),
        "examples": len(examples), "truncated_sessions": ex_stats.truncated_sessions,
        "mean_chars_per_utterance": round(sum(len(t.text) for s in sessions for t in s.turns)
                                          / sum(len(s.turns) for s in sessions), 1),
        "mean_transcript_tokens": round(prefix_tokens, 1), "steps": stats["steps"], "epochs": stats["epochs"],
        "tokens_per_epoch": stats["train_tokens"], "wall_s_per_epoch": stats["wall_s"],
        "tokens_per_s": stats["tokens_per_s"], "final_loss": stats["final_loss"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def llama8b(args) -> list[dict]:
    """The three layouts on a random Llama-3.1-8B-shaped model on CUDA, one epoch each after a warm-up step."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from care.model.packing import pack_by_session, packed_loss
    from care.model.prompts import IGNORE_INDEX, Example
    from care.model.training import collate, target_loss
    from random_llama import random_llama

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--llama8b needs CUDA")
    # --smoke: the same code path on a toy shape (its vocabulary widened to the ids below), to check it on CPU
    model = random_llama("tiny" if args.smoke else "8b", dev, torch.bfloat16,
                         **({"vocab_size": 128256} if args.smoke else {}))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    model.train()
    rng = random.Random(0)
    examples = []
    for s in range(args.sessions):
        prefix = [rng.randrange(1000, 120000) for _ in range(args.transcript_tokens)]
        for item in range(12):
            suffix = [rng.randrange(1000, 120000) for _ in range(45)]
            target = [rng.randrange(1000, 120000) for _ in range(rng.randint(30, 90))]
            ids = prefix + suffix + target
            examples.append(Example(f"s{s}", str(item + 1), ids, [IGNORE_INDEX] * (len(prefix) + len(suffix)) + target))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    results = []
    for layout in ("item", "session"):
        if layout == "session":
            units = pack_by_session(examples)
            run = lambda u: packed_loss(model, u, dev, 30.0)  # noqa: E731
            tokens = lambda u: len(u.input_ids)  # noqa: E731
        else:
            units = [examples[k:k + 6] for k in range(0, len(examples), 6)]
            run = lambda u: target_loss(model, {k: v.to(dev) for k, v in collate(u, 0).items()}, 30.0)  # noqa: E731
            tokens = lambda u: sum(len(e.input_ids) for e in u)  # noqa: E731

        def one(u):
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss_sum, weight = run(u)
            (loss_sum / weight).backward()

        one(units[0])  # warm-up (kernels, allocator)
        optimizer.zero_grad(set_to_none=True)
        sync()
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for u in units:
            one(u)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        wall = time.perf_counter() - t0
        n_tokens = sum(tokens(u) for u in units)
        if args.profile and dev == "cuda":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                one(units[0])
                sync()
            optimizer.zero_grad(set_to_none=True)
            print(f"# {layout}: one unit, top CUDA kernels", flush=True)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60), flush=True)
        results.append({"layout": layout, "device": torch.cuda.get_device_name() if dev == "cuda" else dev,
                        "model": "toy (smoke)" if args.smoke else "llama-3.1-8b-shaped (random)",
                        "sessions": args.sessions, "transcript_tokens": args.transcript_tokens,
                        "tokens_per_epoch": n_tokens, "wall_s_per_epoch": round(wall, 3),
                        "tokens_per_s": round(n_tokens / wall, 1),
                        "sessions_per_s": round(args.sessions / wall, 3),
                        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--utterances", type=int, default=78)
    ap.add_argument("--chars", type=int, default=28)
    ap.add_argument("--max-length", type=int, default=4096, help="context (wide enough that nothing is cut)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--llama8b", action="store_true", help="the GPU comparison on an 8B-shaped model")
    ap.add_argument("--transcript-tokens", type=int, default=1500)
    ap.add_argument("--device", default="cuda", help="--llama8b only")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="--llama8b: print the top CUDA kernels of one unit")
    ap.add_argument("--layout", choices=list(LAYOUTS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.llama8b:
        rows = llama8b(args)
    elif args.layout:
        print(json.dumps(cpu_layout(args)))
        return 0
    else:
        rows = []
        for layout in LAYOUTS:
            cmd = [sys.executable, __file__, "--layout", layout, "--sessions", str(args.sessions), "--utterances",
                   str(args.utterances), "--chars", str(args.chars), "--max-length", str(args.max_length)] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        print(json.dumps(row))
    by = {r["layout"]: r for r in rows}
    for r in rows:
        if r["layout"] != "session":
            print(f"tokens per epoch, {r['layout']} / session: {r['tokens_per_epoch'] / by['session']['tokens_per_epoch']:.1f}x")
    print(f"speedup: {by['item']['wall_s_per_epoch'] / by['session']['wall_s_per_epoch']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
