"""A CPU proxy for the host cost of the GPU fold step: operator calls and host time per packed session.

    python benchmarks/step_proxy.py                    # Llama-3.1-8B's 32 layers, hidden 64, 1,500-token transcripts
    python benchmarks/step_proxy.py --json proxy.json

On the H200 the 8B fold step is bound by the host (issue 24's profile: more CPU time than GPU time, ~10,000
aten::to/copy_ a step): what the device waits for is the Python and dispatcher work of launching each operator.
That work depends on how many operators a step runs, not on the hidden size, so a model with the 8B layer count and
a small hidden size measures it on a CPU: its matmuls take microseconds and the wall time is mostly launch overhead.

Each row runs `care.model.training.finetune` (the code path of `care train`) on a bf16 base, the real presets' layout
and step (4 whole sessions a step), for `--steps` steps, and reports after the first step:
  - aten operator calls per packed session (forward, backward and optimizer; counted with a TorchDispatchMode);
  - host milliseconds per packed session (wall time of the steps without counting, on an otherwise idle CPU).
Rows go from the previous default (checkpointing, float32 adapters under autocast, dropout, one session a forward)
to the new default one change at a time, and add the item layout (with the shared prefix: micro-batches of one
session's items run packed, as many a forward as fit; without: 6 examples a forward) per session's 12 items.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BEFORE = {"model.gradient_checkpointing": True, "train.adapter_dtype": "float32", "lora.dropout": 0.05,
          "train.sessions_per_forward": 1, "train.fused_kernels": "none"}
ROWS = (
    ("before", BEFORE),
    ("no_checkpointing", {**BEFORE, "model.gradient_checkpointing": False}),
    ("bf16_adapters", {**BEFORE, "model.gradient_checkpointing": False, "train.adapter_dtype": "bfloat16"}),
    ("no_dropout", {**BEFORE, "model.gradient_checkpointing": False, "train.adapter_dtype": "bfloat16",
                    "lora.dropout": 0.0}),
    ("default", {"train.fused_kernels": "none"}),  # + sessions per forward by memory (CPU: fused kernels never run)
    ("item_shared_prefix", {"train.packing": "item", "model.gradient_checkpointing": False, "lora.dropout": 0.0,
                            "train.grad_accum": 8}),
    ("item_no_sharing", {"train.packing": "item", "train.share_prefix": False, "model.gradient_checkpointing": False,
                         "lora.dropout": 0.0, "train.grad_accum": 8}),
)


def _per_forward(row: dict) -> str:
    if row["sessions_per_forward"]:
        return f"{row['sessions_per_forward']} session(s)"
    if row["micro_batches_per_forward"]:
        return f"{row['micro_batches_per_forward']} micro-batch(es)"
    return "1 micro-batch"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--transcript-tokens", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per row (the first is not counted)")
    ap.add_argument("--rows", default=",".join(r for r, _ in ROWS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from care.params import Params

    work = Path(tempfile.mkdtemp(prefix="care-proxy-"))
    base = _base(work / "base", args.layers)
    examples, mean_prefix = _examples(base, args.transcript_tokens)
    results = {"layers": args.layers, "transcript_tokens": round(mean_prefix, 1), "rows": {}}
    print(f"{args.layers} layers, hidden 64, transcripts of {mean_prefix:.0f} tokens, 4 sessions a step; per packed "
          "session after the first step (item rows: per session's worth of 12 items)")
    for name, overrides in ROWS:
        if name not in args.rows.split(","):
            continue
        tree: dict = {"model": {"preset": "llama-3.1-8b-instruct", "base": str(base), "dtype": "bfloat16",
                                "max_length": 4096},
                      "train": {"max_steps": args.steps}}
        for key, value in overrides.items():
            section, field = key.split(".")
            tree.setdefault(section, {})[field] = value
        params = Params.model_validate(tree)
        ops, stats = _counted(base, examples, params, work / f"{name}-count")
        seconds = _timed(base, examples, params, work / f"{name}-time")
        sessions = stats["items"] / 12 - stats["first_items"] / 12
        row = {"aten_calls_per_session": round(ops / sessions), "host_ms_per_session": round(1e3 * seconds / sessions, 1),
               "sessions_per_forward": stats["sessions_per_forward"],
               "micro_batches_per_forward": stats.get("micro_batches_per_forward"),
               "checkpointing": stats["gradient_checkpointing"],
               "precision": stats["precision"]["adapter_dtype"], "autocast": stats["precision"]["autocast"],
               "packing": stats["packing"], "shared_prefix": stats["shared_prefix"]}
        results["rows"][name] = row
        print(f"{name:22s} {row['aten_calls_per_session']:8d} aten calls  {row['host_ms_per_session']:8.1f} ms  "
              f"({row['packing']}, checkpointing {row['checkpointing']}, {row['precision']}"
              f"{' autocast' if row['autocast'] else ''}, {_per_forward(row)} a forward)", flush=True)
    rows = results["rows"]
    if "before" in rows and "default" in rows:
        results["ratio"] = {k: round(rows["before"][k] / rows["default"][k], 2)
                            for k in ("aten_calls_per_session", "host_ms_per_session")}
        print(f"before/default: {results['ratio']['aten_calls_per_session']}x fewer operator calls, "
              f"{results['ratio']['host_ms_per_session']}x less host time per session")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    return 0


def _base(out: Path, layers: int) -> Path:
    import torch

    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.prompts import item_block, render_transcript
    from care.model.tiny import train_tokenizer
    from random_llama import random_llama

    instrument = load_instrument("wai-sr")
    corpus, _ = generate(n_sessions=30, language="zh", seed=7)
    texts = [render_transcript(s) for s in corpus] + [item_block(instrument, i, "zh") for i in instrument.item_ids]
    tok = train_tokenizer(texts + ["0123456789\n"] * 10, 2048)
    model = random_llama("tiny", "cpu", torch.bfloat16, num_hidden_layers=layers, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _examples(base: Path, tokens: int):
    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.presets import load_tokenizer
    from care.model.prompts import PromptBuilder, PromptConfig, build_examples
    from care.params import ModelParams
    from bench_sessions import lengthen

    builder = PromptBuilder(load_tokenizer(base), load_instrument("wai-sr"),
                            PromptConfig.from_params(ModelParams(max_length=4096, target_tokens=128)))
    plain, _ = generate(n_sessions=8, language="zh", seed=11, mean_utterances=78)
    chars, mean = 20, 0.0
    for _ in range(2):
        sessions = lengthen(plain, 78, max(2, chars), 11)
        mean = sum(len(builder.encode(s).prefix) for s in sessions) / len(sessions)
        chars = round(chars * tokens / mean)
    examples, _ = build_examples(sessions, builder, "rationale")
    return examples, mean


def _counted(base, examples, params, out):
    """Aten operator calls after the first optimizer step, and the fine-tune's stats."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from care.model.training import finetune

    class Count(TorchDispatchMode):
        calls = 0
        counting = False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if Count.counting:
                Count.calls += 1
            return func(*args, **(kwargs or {}))

    def after(step):
        Count.counting = True  # from the end of the first step on

    with Count():
        stats = finetune(base, examples, params, out, desc="count", step_callback=after)
    stats["first_items"] = stats["items"] // params.train.max_steps  # every step holds the same items
    return Count.calls, stats


def _timed(base, examples, params, out) -> float:
    """Wall seconds of the steps after the first."""
    from care.model.training import finetune

    marks = []
    finetune(base, examples, params, out, desc="time", step_callback=lambda step: marks.append(time.perf_counter()))
    return marks[-1] - marks[0]


if __name__ == "__main__":
    sys.exit(main())
