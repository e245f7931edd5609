"""Scoring speed: naive PyTorch `generate` per item vs PyTorch shared transcript cache vs ONNX Runtime package.

Same model (the `tiny` preset base built by care.model.presets, or `--random` for a random tiny Llama), same
synthetic sessions of CounselingWAI length (default 100 sessions of about 78 utterances), scores only:

  (a) naive: one `model.generate` per (session, item) on the full prompt, the score read from the first
      generated step's logits (as the paper's inference does, one prompt at a time);
  (b) PyTorch with the shared transcript cache (care.evaluation.torch_scoring.score_sessions, shared_cache=True);
  (c) the `care score` path: the exported, packaged model on ONNX Runtime with the shared cache
      (care.release.onnx_runtime.score_sessions in-process; the CLI is also timed once, start-up included).

Checks that the expected scores of (a), (b), (c) agree within 1e-3. The three paths run in interleaved
rounds, so load from other processes hits them alike: compare the ratios of one run, not milliseconds across
runs. The last lines are the two ratios, then the load while it ran:

    onnx_vs_torch_shared=Y.YYx
    onnx_vs_naive=X.Xx
    load: 1-min load average A at the start, B at the end, on N cores (K busy processes of this benchmark)

`--busy K` starts K processes that keep a core busy each for the whole timing (the "another process keeps
both cores busy" case: `--busy 2` on a 2-core machine).

    python benchmarks/score.py [--sessions 100] [--utterances 78] [--random] [--work DIR] [--busy K]
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _base(args, work: Path) -> Path:
    from care.params import Params

    if args.random:
        from care.model.prompts import render_transcript
        from care.data.synth import generate
        from care.model.tiny import random_model, train_tokenizer

        out = work / "random-base"
        if not (out / "config.json").is_file():
            sessions, _ = generate(n_sessions=200, language="zh", seed=12345)
            tok = train_tokenizer([render_transcript(s) for s in sessions], 2048)
            random_model(tok).save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
        return out
    from care.model.presets import prepare_base

    return Path(prepare_base(Params())[0])  # the shipped tiny base (dvc pull base.dvc)


def _package(base: Path, work: Path, config) -> Path:
    from care.data.instrument import instrument_path
    from care.release import build_package, export_onnx
    from care.release.package import ScoringConfig

    pkg = work / "package"
    if not (pkg / "manifest.json").is_file():
        export_onnx(base, work / "onnx")
        build_package(pkg, work / "onnx", base, instrument_path("wai-sr"),
                      {"base_model": str(base), "scoring": ScoringConfig(
                          **dict(config), languages=["zh"], prompt_version="1", readout="expected",
                          grounded_quotes=True).model_dump(mode="json")})
    return pkg


def _spin() -> None:  # a busy process: the load another user puts on the cores
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--utterances", type=int, default=78)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--round", type=int, default=10, help="sessions per interleaved timing round")
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--random", action="store_true", help="random tiny Llama instead of the tiny preset base")
    ap.add_argument("--work", type=Path, default=None, help="keep the export/package here (default: temp dir)")
    ap.add_argument("--busy", type=int, default=0, help="processes that keep a core busy each while timing")
    ap.add_argument("--session-batch", type=int, default=1, help="sessions per ONNX Runtime prefix batch")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="care-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.work is None:  # the export, the package and the sessions' copy go with the run
        atexit.register(shutil.rmtree, work, True)

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from care.model.presets import load_tokenizer
    from care.fsutil import atomic_write_lines
    from care.data.instrument import load_instrument
    from care.release.onnx_runtime import default_threads, load_package
    from care.release.onnx_runtime import score_sessions as ort_score
    from care.model.prompts import PromptBuilder, PromptConfig
    from care.params import ModelParams
    from care.evaluation.torch_scoring import score_sessions as torch_score
    from care.data.synth import generate
    from naive_generate import naive_scores

    threads = default_threads()
    torch.set_num_threads(threads)
    config = PromptConfig.from_params(ModelParams(max_length=args.max_length, target_tokens=128))
    base = _base(args, work)
    pkg = load_package(_package(base, work, config), threads=threads)
    tok = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    builder = PromptBuilder(tok, load_instrument("wai-sr"), config)
    sessions, _ = generate(n_sessions=args.sessions, language="zh", seed=2026, mean_utterances=args.utterances)
    n = len(sessions)
    encs = [builder.encode(s) for s in sessions]
    utt = np.mean([len(s.turns) for s in sessions])
    chars = np.mean([len(t.text) for s in sessions for t in s.turns])
    toks = np.mean([len(e.prefix) for e in encs])
    print(f"model: {base.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params), threads={threads}")
    print(f"sessions: {n}, {utt:.1f} utterances of {chars:.1f} chars, transcript prefix {toks:.0f} tokens, "
          f"truncated {sum(e.truncated for e in encs)}")

    warm = sessions[:2]  # warm-up (allocators, ORT graph) outside the timings
    naive_scores(model, tok, builder, warm[:1])
    torch_score(model, tok, builder, warm, batch_size=args.batch_size, progress=False)
    ort_score(pkg, warm, batch_size=args.batch_size, progress=False, session_batch=args.session_batch)
    busy = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for proc in busy:
        proc.start()
    load_start = os.getloadavg()[0]

    runs = {
        "a": lambda chunk: naive_scores(model, tok, builder, chunk),
        "b": lambda chunk: torch_score(model, tok, builder, chunk, batch_size=args.batch_size, shared_cache=True,
                                       progress=False),
        "c": lambda chunk: ort_score(pkg, chunk, batch_size=args.batch_size, progress=False,
                                     session_batch=args.session_batch),
    }
    # Interleaved rounds (rotating order) so that load from other processes hits the three paths alike.
    results = {k: [] for k in runs}
    seconds = {k: 0.0 for k in runs}
    cpu = {k: 0.0 for k in runs}  # CPU time of this process (all its threads): the work, whatever the load
    order = list(runs)
    for r, start in enumerate(range(0, n, args.round)):
        chunk = sessions[start : start + args.round]
        for k in order[r % 3 :] + order[: r % 3]:
            t, c = time.perf_counter(), time.process_time()
            results[k] += runs[k](chunk)
            seconds[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
    load_end = os.getloadavg()[0]
    for proc in busy:
        proc.terminate()
    ms = {k: 1000 * seconds[k] / n for k in runs}
    names = {"a": "naive torch generate per item", "b": "torch shared transcript cache",
             "c": "onnx runtime (care score path)"}
    for k in runs:
        print(f"({k}) {names[k]:<32}: {n / seconds[k]:7.2f} sessions/s {ms[k]:8.1f} ms/session "
              f"(CPU time {1000 * cpu[k] / n:6.1f} ms/session)")
    a, b, c = results["a"], results["b"], results["c"]
    ma, mb, mc = ms["a"], ms["b"], ms["c"]

    items = builder.instrument.item_ids
    ea = np.array([[r[i][0] for i in items] for r in a])
    eb = np.array([[s.items[i].expected for i in items] for s in b])
    ec = np.array([[s.items[i].expected for i in items] for s in c])
    d_ab, d_ac, d_bc = np.abs(ea - eb).max(), np.abs(ea - ec).max(), np.abs(eb - ec).max()
    print(f"max |expected| difference: a-b {d_ab:.2e}  a-c {d_ac:.2e}  b-c {d_bc:.2e}")
    if max(d_ab, d_ac, d_bc) > 1e-3:
        sys.exit("FAIL: expected scores disagree by more than 1e-3")
    greedy_same = sum(r[i][1] == x.items[i].greedy == y.items[i].greedy for r, x, y in zip(a, b, c) for i in items)
    unparsed = sum(y.items[i].greedy is None for y in c for i in items)
    print(f"greedy scores identical in all three: {greedy_same}/{n * len(items)} (unparsed: {unparsed})")

    inp = work / "bench_sessions.jsonl"
    atomic_write_lines(inp, [s.to_json() for s in sessions])
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "care_cli.main", "score", "--model", str(pkg.root), str(inp),
                           "--out", str(work / "bench_scores.jsonl"), "--batch-size", str(args.batch_size)],
                          capture_output=True, text=True)
    cli = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"FAIL: care score exited {proc.returncode}: {proc.stderr[-500:]}")
    print(f"care score CLI (subprocess, start-up + validation included): {cli:.1f} s for {n} sessions "
          f"({1000 * cli / n:.1f} ms/session)")
    print(f"ratios: b/a {ma / mb:.1f}x  c/a {ma / mc:.1f}x  c/b {mb / mc:.2f}x")
    print(f"onnx_vs_torch_shared={mb / mc:.2f}x")
    print(f"onnx_vs_naive={ma / mc:.1f}x")
    print(f"load: 1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end, on {os.cpu_count()} "
          f"cores ({args.busy} busy processes of this benchmark; ONNX Runtime and torch threads={threads})")


if __name__ == "__main__":
    main()
