"""Rationale generation with and without grounded quotes: time, quotes and grounding rate (bar: under 1.5x).

Runs the `care score --rationales` path (a release package on ONNX Runtime, care.release.onnx_runtime) on
sessions in the annotation format, alternating the two modes after one warm-up session, and prints per mode
the seconds, quotes, grounded quotes and BLEU/ROUGE-L against the sessions' reference rationales (when they
have them). A model that never quotes shows only the constraint's fixed cost (the transcript index); use a
trained model. The last line is `ratio: constrained/unconstrained = X.XXx (bar 1.5x) PASS|FAIL`.

    python benchmarks/grounded_quotes.py --model release --sessions data/sessions.jsonl [--n 8] \
        [--max-new-tokens 96] [--repeat 2] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BAR = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="release package directory")
    ap.add_argument("--sessions", required=True, help="annotation JSONL (the first --n sessions are used)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from care.data.validation import load_valid_sessions
    from care.evaluation.rationale_quality import rationale_quality
    from care.release.onnx_runtime import load_package, score_sessions

    pkg = load_package(args.model, threads=args.threads)
    sessions = load_valid_sessions(args.sessions, pkg.instrument, ratings_required=False)[: args.n]
    kw = dict(rationales=True, max_new_tokens=args.max_new_tokens, progress=False)
    score_sessions(pkg, sessions[:1], grounded_quotes=True, **kw)  # warm-up: sessions, caches, byte table
    score_sessions(pkg, sessions[:1], grounded_quotes=False, **kw)
    seconds = {True: 0.0, False: 0.0}
    scored = {}
    for r in range(args.repeat):
        for grounded in ((True, False) if r % 2 == 0 else (False, True)):
            start = time.perf_counter()
            scored[grounded] = score_sessions(pkg, sessions, grounded_quotes=grounded, **kw)
            seconds[grounded] += time.perf_counter() - start
    marks = {s.language: pkg.instrument.prompt_texts(s.language).quotes for s in sessions}
    print(f"{len(sessions)} sessions x {len(pkg.instrument.item_ids)} items, max {args.max_new_tokens} new tokens, "
          f"{args.repeat} run(s) per mode")
    for grounded, name in ((True, "constrained"), (False, "unconstrained")):
        pairs = [(it.rationale or "", (s.rationales or {}).get(i, ""), [t.text for t in s.turns], s.language)
                 for s, sc in zip(sessions, scored[grounded]) for i, it in sc.items.items()]
        q = rationale_quality(pairs, marks)
        rate = "n/a" if q["grounding_rate"] is None else f"{q['grounding_rate']:.3f}"
        print(f"{name:>13}: {seconds[grounded] / args.repeat:7.2f} s/run  quotes {q['n_quotes']:4d}  "
              f"grounded {q['n_quotes_grounded']:4d}  rate {rate}  BLEU {q['bleu']:.2f}  ROUGE-L {q['rouge_l_f']:.3f}")
    ratio = seconds[True] / seconds[False]
    print(f"ratio: constrained/unconstrained = {ratio:.2f}x (bar {BAR}x) {'PASS' if ratio < BAR else 'FAIL'}")
    return 0 if ratio < BAR else 1


if __name__ == "__main__":
    sys.exit(main())
