"""Benchmark: PyTorch scoring with a shared transcript cache vs each item's prompt on its own.

    python benchmarks/score_torch.py [--sessions 20] [--utterances 78] [--threads N] [--repeat 2]

A random tiny Llama (the `tiny` preset's shape) and synthetic Chinese sessions of about 78 utterances of
about 28 characters. Prints ms/session for shared_cache=False and True, their ratio, and the largest
difference in expected scores between the two. Prints no transcript text.
"""

from __future__ import annotations

import argparse
import os
import random
import time


def _sessions(n: int, utterances: int, seed: int, source: str):
    """care.data.synth sessions (its utterances run about 20 characters), or random ones of about 28 characters."""
    if source == "synth":
        from care.data.synth import generate

        sessions, _ = generate(n_sessions=n, language="zh", seed=seed, mean_utterances=utterances)
        return sessions, "care.data.synth"
    else:
        from care.data.schema import Session, Turn

        rng = random.Random(seed)
        chars = "我你他的了是在有不这个们来到时大地为上和也要就出会可以说生对年着能过工作压力睡觉焦虑沟通领导家人朋友感觉咨询"
        sessions = []
        for s in range(n):
            turns = [Turn(speaker=("counselor", "client")[t % 2],
                          text="".join(rng.choice(chars) for _ in range(max(4, int(rng.gauss(28, 8))))))
                     for t in range(utterances)]
            sessions.append(Session(session_id=f"b{s:03d}", language="zh", turns=turns))
        return sessions, "inline"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--utterances", type=int, default=78)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--source", choices=["inline", "synth"], default="inline")
    ap.add_argument("--no-digit-bias", action="store_true",
                    help="keep the random LM head: its answer argmax is rarely a digit, so every batch also decodes "
                         "the 4 fallback tokens (by default the head is biased to digits, as a trained model is)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per mode (best one is reported)")
    args = ap.parse_args()

    import torch

    from care.data.instrument import load_instrument
    from care.model.prompts import PromptBuilder, PromptConfig, item_block, render_transcript
    from care.params import ModelParams
    from care.evaluation.torch_scoring import score_sessions
    from care.model.tiny import random_model, train_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    instrument = load_instrument("wai-sr")
    sessions, source = _sessions(args.sessions, args.utterances, 0, args.source)
    corpus = [render_transcript(s) for s in sessions]
    corpus += [item_block(instrument, i, "zh") for i in instrument.item_ids] + ["0123456789\n"] * 10
    tokenizer = train_tokenizer(corpus, vocab_size=2048)
    builder = PromptBuilder(tokenizer, instrument, PromptConfig.from_params(ModelParams(max_length=4096, target_tokens=128)))
    model = random_model(tokenizer)  # the tiny preset's default shape: 2 layers, hidden 128
    if not args.no_digit_bias:
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[builder.digit_ids] = 20.0
        model.lm_head = head
    enc = [builder.encode(s) for s in sessions]
    n_utts = sum(len(s.turns) for s in sessions) / len(sessions)
    n_chars = sum(len(t.text) for s in sessions for t in s.turns) / sum(len(s.turns) for s in sessions)
    print(f"sessions={len(sessions)} ({source}) utterances/session={n_utts:.0f} chars/utterance={n_chars:.0f} "
          f"prefix tokens/session={sum(len(e.prefix) for e in enc) / len(enc):.0f} "
          f"suffix tokens/item={sum(len(x) for x in enc[0].items.values()) / len(enc[0].items):.0f} "
          f"truncated={sum(e.truncated for e in enc)}")
    print(f"digit-biased head={not args.no_digit_bias} batch_size={args.batch_size}")
    print(f"torch threads={torch.get_num_threads()} load average={os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")

    score_sessions(model, tokenizer, builder, sessions[:2], progress=False)  # warm-up
    score_sessions(model, tokenizer, builder, sessions[:2], progress=False, shared_cache=False)
    timings, results = {}, {}
    for shared in (False, True):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            results[shared] = score_sessions(model, tokenizer, builder, sessions, batch_size=args.batch_size,
                                             shared_cache=shared, progress=False)
            best = min(best, time.perf_counter() - t0)
        timings[shared] = best * 1000 / len(sessions)
        print(f"shared_cache={shared!s:5}  {timings[shared]:8.1f} ms/session")
    diff = max(abs(a.items[i].expected - b.items[i].expected)
               for a, b in zip(results[False], results[True]) for i in instrument.item_ids)
    print(f"speed-up (per-item / shared): {timings[False] / timings[True]:.1f}x; max |expected diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
