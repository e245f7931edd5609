"""Training throughput of the tiny preset on synthetic data: tokens/s and peak RSS.

    python benchmarks/train_tokens.py [--sessions 40] [--steps 20] [--targets rationale] [--threads N]

Takes the shipped tiny base (base/tiny), fine-tunes LoRA for --steps optimizer steps on a synthetic
corpus and prints tokens/s (prompt + target tokens of the examples trained on, per second of training)
and the process's peak resident memory. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--targets", choices=["rationale", "score_only"], default="rationale")
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--no-share-prefix", action="store_true", help="encode every example in full")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from care.model.presets import load_tokenizer, prepare_base
    from care.data.instrument import load_instrument
    from care.params import Params
    from care.model.prompts import PromptBuilder, PromptConfig, build_examples
    from care.data.synth import generate
    from care.model.training import finetune

    params = Params()
    params.train.targets = args.targets
    params.train.max_steps = args.steps
    params.train.share_prefix = not args.no_share_prefix
    params.model.finetune = args.finetune
    sessions, _ = generate(n_sessions=args.sessions, seed=1)
    t0 = time.perf_counter()
    base, _ = prepare_base(params)
    base_s = time.perf_counter() - t0
    tokenizer = load_tokenizer(base)
    builder = PromptBuilder(tokenizer, load_instrument(params.data.instrument), PromptConfig.from_params(params.model))
    examples, _ = build_examples(sessions, builder, args.targets)
    with tempfile.TemporaryDirectory() as tmp:
        stats = finetune(base, examples, params, Path(tmp) / "out", desc="bench")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "targets": args.targets, "finetune": args.finetune, "shared_prefix": stats["shared_prefix"],
        "threads": torch.get_num_threads(), "steps": stats["steps"], "examples_per_step":
        params.train.batch_size * params.train.grad_accum, "train_tokens": stats["train_tokens"],
        "target_tokens": stats["target_tokens"], "wall_s": stats["wall_s"], "tokens_per_s": stats["tokens_per_s"],
        "base_build_or_load_s": round(base_s, 1), "peak_rss_mb": round(peak_mb, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
