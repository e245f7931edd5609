"""The pipeline's GPU path at a real preset's shape, in one prepared run: figures for a lent GPU.

    python benchmarks/gpu_pipeline.py --shape 1b --out gpu_1b.json      # a fast first pass (Llama-3.2-1B shape)
    python benchmarks/gpu_pipeline.py --shape 8b --out gpu_8b.json      # Llama-3.1-8B's exact shape
    python benchmarks/gpu_pipeline.py --shape tiny --device cpu          # the same code on CPU, in seconds

A randomly initialised Llama of the shape (no hub access; benchmarks/random_llama.py) and a small BPE
tokenizer trained here stand in for the preset's weights; the sessions are care.data.synth transcripts
lengthened to `--transcript-tokens` (CounselingWAI: about 1,500). Every stage runs the project's own code
with the real preset's settings:

  init    the random model saved as the base (bf16 on CUDA), with the tokenizer
  train   one fold's fine-tune through care.model.launch.run_finetune: LoRA r16 on every projection, bf16,
          gradient checkpointing, session packing, lr 1e-4; a few steps, timed after the first. Figures:
          tokens/s, MFU, peak GPU memory, and seconds per epoch of a CounselingWAI-sized fold (630 sessions x
          12 items, 1,500-token transcripts) extrapolated from the measured rate
  score   PyTorch scoring on the device: one `generate` per item vs the shared transcript cache
          (care.evaluation.torch_scoring, one and several sessions per batch), sessions/s
  merge   care.release.merge_adapter (float32, with its parity check)
  export  care.release.export_onnx in fp16 (Optimum; on CUDA on a GPU), external data over 2 GB: time, size
  parity  care.release.check_parity of the fp16 model: ONNX Runtime on whichever provider it has (named in
          the figures) vs PyTorch float32 on the device, on short sessions, against the fp16 thresholds

The run budgets its time: a stage that would not finish before `--deadline-s` (rough per-stage estimates
below; the JSON records what each stage really took) is skipped, and a watchdog writes the figures and
exits (code 3) if the deadline passes inside a stage. The JSON is rewritten after every stage, so what was
measured survives. Exit 0 when every asked stage ran, 1 when one failed, 3 at the deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

STAGES = ("init", "train", "profile", "equivalence", "score", "merge", "export", "parity")
NEEDS = {"train": "init", "profile": "init", "equivalence": "init", "score": "init", "merge": "train", "export": "merge", "parity": "export"}
# Rough seconds per stage on an H200 (merge runs on the CPU in float32; export and merge write the weights), and
# per fine-tune variant; the JSON records what each really took.
ESTIMATE_S = {"8b": {"init": 60, "train": 150, "variant": 30, "profile": 40, "equivalence": 30, "score": 60, "merge": 60, "export": 150,
                     "parity": 120},
              "1b": {"init": 15, "train": 60, "variant": 10, "profile": 15, "equivalence": 10, "score": 30, "merge": 15, "export": 50,
                     "parity": 40},
              "tiny": {stage: 5 for stage in (*STAGES, "variant")}}
# per shape: optimizer steps of each variant (4 sessions each, the first untimed), sessions scored per item, the
# shared-cache grid (session batch, item rows per pass) and its sessions, parity sessions' utterances (short: ONNX
# Runtime may run the fp16 model on the CPU)
SETTINGS = {"8b": dict(steps=4, naive=1, shared=32, grid=((1, 16), (4, 48), (8, 96), (16, 96), (32, 192)),
                       parity_utterances=12),
            "1b": dict(steps=4, naive=2, shared=32, grid=((1, 16), (4, 48), (8, 96), (16, 96), (32, 192)),
                       parity_utterances=24),
            "tiny": dict(steps=3, naive=1, shared=4, grid=((1, 16), (2, 24)), parity_utterances=10)}
# The fold step: the real presets' default (every decision auto), then one change at a time from the previous default (checkpointing on, float32 adapters under autocast,
# LoRA dropout 0.05, one session a forward, no fused kernels) towards it. Each entry: params overrides on top of the real preset's resolved params.
_BEFORE = {"model.gradient_checkpointing": True, "train.adapter_dtype": "float32", "lora.dropout": 0.05,
           "train.sessions_per_forward": 1, "train.fused_kernels": "none"}
VARIANTS = (  # the default first: if the deadline cuts the list, what it cuts is the one-by-one steps
    ("default", {}),
    ("before", _BEFORE),
    ("no_checkpointing", {**_BEFORE, "model.gradient_checkpointing": False}),
    ("bf16_adapters", {**_BEFORE, "model.gradient_checkpointing": False, "train.adapter_dtype": "bfloat16"}),
    ("no_dropout", {**_BEFORE, "model.gradient_checkpointing": False, "train.adapter_dtype": "bfloat16",
                    "lora.dropout": 0.0}),
    ("sessions_per_forward", {"train.fused_kernels": "none"}),
)
FOLD = {"sessions": 630, "items": 12, "transcript_tokens": 1500}  # a CounselingWAI-sized training fold
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16, vendor spec
TOKENIZER_VOCAB = 2048
TRANSFORMERS_BELOW = (4, 58)  # optimum-onnx's bound, as in pyproject.toml


class Run:
    """The figures, the clock and the deadline of one run; every stage's result is saved as it comes."""

    def __init__(self, args):
        self.args, self.t0, self.current = args, time.monotonic(), None
        self.figures = {"shape": args.shape, "device": args.device, "started": datetime.now(timezone.utc).isoformat(),
                        "deadline_s": args.deadline_s, "stages": {}}
        self.lock = threading.Lock()
        timer = threading.Timer(args.deadline_s, self._deadline)
        timer.daemon = True
        timer.start()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {message}", flush=True)

    def save(self) -> None:
        with self.lock:
            self.figures["elapsed_s"] = round(self.elapsed(), 1)
            out = Path(self.args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(self.figures, indent=2) + "\n", "utf-8")
            os.replace(tmp, out)

    def _deadline(self) -> None:
        if self.current:
            self.figures["stages"][self.current] = {"status": "interrupted", "reason": "deadline",
                                                    "at_s": round(self.elapsed(), 1)}
        self.save()
        self.log(f"deadline ({self.args.deadline_s} s) reached during {self.current}; figures in {self.args.out}")
        os._exit(3)

    def stage(self, name: str, fn, *, disk_bytes: int = 0) -> bool:
        """Run stage `name` unless asked not to, blocked by a stage it needs, or out of time or disk."""
        stages = self.figures["stages"]
        if name not in self.args.stages:
            return False
        need = NEEDS.get(name)
        if need and stages.get(need, {}).get("status") != "done":
            stages[name] = {"status": "skipped", "reason": f"needs {need}, which did not run"}
        elif self.elapsed() + ESTIMATE_S[self.args.shape][name] > self.args.deadline_s:
            left = self.args.deadline_s - self.elapsed()
            stages[name] = {"status": "skipped", "reason": f"would not finish before the deadline (about "
                            f"{ESTIMATE_S[self.args.shape][name]} s, {left:.0f} s left)"}
        elif disk_bytes and shutil.disk_usage(self.args.work).free < 1.1 * disk_bytes:
            free = shutil.disk_usage(self.args.work).free
            stages[name] = {"status": "skipped", "reason": f"needs about {disk_bytes / 2**30:.1f} GiB of disk, "
                            f"{free / 2**30:.1f} GiB free under {self.args.work}"}
        else:
            self.current = name
            self.log(f"{name} ...")
            started = time.monotonic()
            try:
                result = fn()
                stages[name] = {"status": "done", "seconds": round(time.monotonic() - started, 1), **result}
            except Exception as exc:  # noqa: BLE001 - recorded, and the stages that do not need it still run
                traceback.print_exc()
                stages[name] = {"status": "failed", "seconds": round(time.monotonic() - started, 1),
                                "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            self.current = None
        self.log(f"{name}: {json.dumps(stages[name])}")
        self.save()
        return stages[name]["status"] == "done"


# ------------------------------------------------------------------------------------------------ helpers


def _environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                "onnxruntime-gpu"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    return env


def _sessions(builder, n: int, seed: int, tokens: int | None = None, utterances: int | None = None):
    """`n` synthetic zh sessions of about `utterances` utterances and their mean prompt-prefix length; with
    `tokens`, the utterances are lengthened so that the prefix is about that many tokens (lengths scaled once
    from a first measurement)."""
    from care.data.synth import generate

    from bench_sessions import lengthen

    utterances = utterances or (78 if (tokens or 0) >= 1000 else 20)  # CounselingWAI: about 78
    base, _ = generate(n_sessions=n, language="zh", seed=seed, mean_utterances=utterances)
    if tokens is None:
        return base, sum(len(builder.encode(s).prefix) for s in base) / len(base)

    def at(chars: int):
        sessions = lengthen(base, utterances, max(2, chars), seed)
        return sessions, sum(len(builder.encode(s).prefix) for s in sessions) / len(sessions)

    sessions, mean = at(20)
    sessions, mean = at(round(20 * tokens / mean))
    return sessions, mean


def _train_flops(packed, config) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one LoRA training pass over a packed session.

    Model FLOPs: the forward (2 x weights per token in the layers, attention 4 x hidden per (query, key)
    pair that the block mask allows, the LM head at the target positions only) plus the backward through
    frozen weights (input gradients only: the same again for the matmuls, twice the forward for attention).
    Hardware FLOPs add gradient checkpointing's recomputed forward of the layers. LoRA's rank-16 matmuls
    (under 1%) are left out.
    """
    from collections import Counter

    from care.model.prompts import IGNORE_INDEX

    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head
    weights = layers * (2 * h * config.num_attention_heads * head + 2 * h * kv + 3 * h * config.intermediate_size)
    sizes = Counter(packed.blocks)
    prefix = sizes.pop(0, 0)
    pairs = prefix * (prefix + 1) / 2 + sum(n * prefix + n * (n + 1) / 2 for n in sizes.values())
    tokens = len(packed.input_ids)
    targets = sum(1 for x in packed.labels[1:] if x != IGNORE_INDEX)
    layer_fwd = 2 * weights * tokens + 4 * h * layers * pairs
    head_fwd = 2 * h * vocab * targets
    model = 2 * (2 * weights * tokens + head_fwd) + 3 * 4 * h * layers * pairs
    return model, model + layer_fwd


def _peak_flops(args, env) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    name = env.get("gpu") or ""
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def _cuda_sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SETTINGS), default="1b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", type=Path, default=Path("gpu_pipeline.json"))
    ap.add_argument("--work", type=Path, default=None, help="where the weights go (default: a temp dir, removed)")
    ap.add_argument("--deadline-s", type=float, default=540.0, help="stop (and write the figures) before this")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ",".join(STAGES))
    ap.add_argument("--transcript-tokens", type=int, default=None, help="default 1500 (tiny: 200)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps timed (default by shape)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: the GPU's bf16 spec)")
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS),
                    help="fine-tune variants to time, comma-separated subset of " + ",".join(v for v, _ in VARIANTS))
    ap.add_argument("--profile-out", type=Path, default=None, help="the profile stage's operator tables (text)")
    ap.add_argument("--reuse-base", action="store_true", help="keep a base already in --work/base (same shape)")
    args = ap.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "merge" in args.stages and "default" not in args.variants:
        ap.error("the merge stage merges the default variant's adapter: keep `default` in --variants")
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    keep = args.work is not None
    args.work = Path(args.work or tempfile.mkdtemp(prefix="care-gpu-pipeline-"))
    args.work.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    try:
        return _pipeline(run, args)
    finally:
        if not keep:
            shutil.rmtree(args.work, ignore_errors=True)


def _pipeline(run: Run, args) -> int:
    import torch
    import transformers

    settings = dict(SETTINGS[args.shape])
    settings["steps"] = args.steps or settings["steps"]
    tokens = args.transcript_tokens or (200 if args.shape == "tiny" else FOLD["transcript_tokens"])
    env = _environment(args.device)
    run.figures.update(environment=env, settings={**settings, "transcript_tokens": tokens})
    run.save()
    if args.device == "cuda" and not torch.cuda.is_available():
        run.figures["error"] = "--device cuda: torch sees no CUDA device"
        run.save()
        run.log(run.figures["error"])
        return 2
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= TRANSFORMERS_BELOW:
        run.figures["error"] = (f"transformers {transformers.__version__}: the pinned stack needs <4.58 "
                                "(optimum-onnx); carry the wheels (docs/gpu.md)")
        run.save()
        run.log(run.figures["error"])
        return 2

    from care.data.instrument import load_instrument
    from care.model.presets import load_tokenizer
    from care.model.prompts import PromptBuilder, PromptConfig, item_block, render_transcript
    from care.params import Params

    from random_llama import llama_config, random_llama

    dev, shape = args.device, args.shape
    params = _real_params(args.work / "base", settings["steps"], max(4096, 2 * tokens), {})
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    config = llama_config(shape)
    n_params = None
    base, adapter, merged, onnx_dir = (args.work / d for d in ("base", "adapter-default", "merged", "onnx"))
    instrument = load_instrument("wai-sr")
    state: dict = {}

    def init() -> dict:
        from care.data.synth import generate
        from care.model.tiny import train_tokenizer

        reused = (base / "config.json").is_file() and args.reuse_base
        if reused:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(base)
            total = _approx_params(cfg)
        else:
            corpus, _ = generate(n_sessions=60, language="zh", seed=7)
            texts = [render_transcript(s) for s in corpus] + [item_block(instrument, i, "zh")
                                                             for i in instrument.item_ids]
            tok = train_tokenizer(texts + ["0123456789\n"] * 10, TOKENIZER_VOCAB)
            model = random_llama(shape, dev, dtype, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            total = sum(p.numel() for p in model.parameters())
            model.save_pretrained(base, safe_serialization=True)
            tok.save_pretrained(base)
            del model
            if dev == "cuda":
                torch.cuda.empty_cache()
        state["tokenizer"] = load_tokenizer(base)
        state["builder"] = PromptBuilder(state["tokenizer"], instrument, PromptConfig.from_params(params.model))
        return {"parameters": total, "dtype": str(dtype).replace("torch.", ""), "reused": reused,
                "base_bytes": sum(f.stat().st_size for f in base.iterdir())}

    approx_params = _approx_params(config)
    run.stage("init", init, disk_bytes=approx_params * (2 if dev == "cuda" else 4))
    if "builder" in state:
        n_params = run.figures["stages"]["init"]["parameters"]

    def train() -> dict:
        from care.model.launch import run_finetune
        from care.model.packing import pack_by_session
        from care.model.prompts import build_examples

        sessions, mean_prefix = _sessions(state["builder"], 4 * settings["steps"], 11, tokens)
        examples, _ = build_examples(sessions, state["builder"], "rationale")
        packed = pack_by_session(examples)
        flops = [_train_flops(p, config) for p in packed]
        packed_tokens = sum(len(p.input_ids) for p in packed)
        model_per_token = sum(f[0] for f in flops) / packed_tokens
        hw_per_token = sum(f[1] for f in flops) / packed_tokens
        item_tokens = (packed_tokens - sum(p.blocks.count(0) for p in packed)) / sum(p.n_items for p in packed)
        peak = _peak_flops(args, env)
        fold_tokens = FOLD["sessions"] * (FOLD["transcript_tokens"] + FOLD["items"] * item_tokens)
        rows, first_losses = {}, {}
        for name, overrides in VARIANTS:
            if name not in args.variants:
                continue
            if run.elapsed() + ESTIMATE_S[shape]["variant"] > args.deadline_s - ESTIMATE_S[shape]["score"]:
                rows[name] = {"status": "skipped", "reason": "deadline"}
                continue
            vparams = _real_params(base, settings["steps"], params.model.max_length, overrides)
            if dev == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                stats = run_finetune(base, examples, vparams, args.work / f"adapter-{name}", desc=f"{shape} {name}")
            except Exception as exc:  # noqa: BLE001 - one variant failing leaves the others' figures
                traceback.print_exc()
                rows[name] = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                continue
            rate = stats["tokens_per_s_after_first"] or stats["tokens_per_s"]
            first_losses[name] = stats["first_loss"]
            rows[name] = {
                "status": "done", "seconds": round(time.perf_counter() - started, 1), "overrides": overrides,
                "gradient_checkpointing": stats["gradient_checkpointing"],
                "sessions_per_step": stats["sessions_per_step"], "sessions_per_forward": stats["sessions_per_forward"],
                "precision": stats["precision"], "fused_kernels": stats["fused_kernels"], "memory": stats["memory"],
                "tokens_per_s": stats["tokens_per_s"], "tokens_per_s_after_first": stats["tokens_per_s_after_first"],
                "items_per_s_after_first": stats["items_per_s_after_first"], "first_step_s": stats["first_step_s"],
                "first_loss": stats["first_loss"], "final_loss": stats["final_loss"],
                "peak_gpu_gib": stats["peak_gpu_gib"],
                "model_tflops_per_s": round(model_per_token * rate / 1e12, 2),
                "mfu": round(model_per_token * rate / peak, 4) if peak else None,
                "hfu_with_recompute": round((hw_per_token if stats["gradient_checkpointing"] else model_per_token)
                                            * rate / peak, 4) if peak else None,
                "fold_epoch_s_estimate": round(fold_tokens / rate, 1),
            }
            run.log(f"  {name}: {rate:.0f} tokens/s, MFU {rows[name]['mfu']}, peak {stats['peak_gpu_gib']} GiB, "
                    f"checkpointing {stats['gradient_checkpointing']}, {stats['sessions_per_forward']} a forward")
            state["default_params"] = vparams if name == "default" else state.get("default_params")
        base_loss = first_losses.get("before")
        return {
            "mean_transcript_tokens": round(mean_prefix, 1), "mean_item_tokens": round(item_tokens, 1),
            "variants": rows, "peak_flops_assumed": peak,
            "first_loss_rel_diff_vs_before": {k: round(abs(v - base_loss) / abs(base_loss), 6)
                                              for k, v in first_losses.items()} if base_loss else None,
            "mfu_definition": "forward + input-gradient backward of the frozen weights, attention pairs the block "
                              "mask allows, LM head at target positions; HFU adds checkpointing's recompute",
            "fold_epoch_basis": {**FOLD, "tokens": round(fold_tokens)},
            "examples": {"sessions": len(sessions), "items": len(examples)},
        }

    run.stage("train", train)

    def profile() -> dict:
        """torch.profiler over two steps of the default recipe: what the time goes to."""
        from torch.profiler import ProfilerActivity, profile as torch_profile, schedule

        from care.model.launch import run_finetune
        from care.model.prompts import build_examples

        sessions, _ = _sessions(state["builder"], 16, 11, tokens)
        examples, _ = build_examples(sessions, state["builder"], "rationale")
        vparams = _real_params(base, 4, params.model.max_length, {})
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with torch_profile(activities=activities, schedule=schedule(wait=1, warmup=0, active=2, repeat=1)) as prof:
            run_finetune(base, examples, vparams, args.work / "adapter-profile", desc=f"{shape} profile",
                         step_callback=lambda step: prof.step())
        averages = prof.key_averages()
        by = "self_device_time_total" if dev == "cuda" else "self_cpu_time_total"
        tables = averages.table(sort_by=by, row_limit=30) + "\n\n" + averages.table(sort_by="count", row_limit=20)
        if args.profile_out:
            Path(args.profile_out).write_text(tables, "utf-8")
        ranked = sorted(averages, key=lambda e: -getattr(e, by))
        return {"steps": 2, "self_cpu_s": round(sum(e.self_cpu_time_total for e in averages) / 1e6, 3),
                "self_device_s": round(sum(e.self_device_time_total for e in averages) / 1e6, 3),
                "operator_calls": sum(e.count for e in averages),
                "top": [{"name": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
                         "self_device_ms": round(e.self_device_time_total / 1e3, 1)} for e in ranked[:15]]}

    run.stage("profile", profile)

    def equivalence() -> dict:
        """On the device, at this shape: the loss and adapter gradients of one packed session under each change of
        the recipe against the previous default (float32 adapters under bf16 autocast), relative to the largest
        gradient; and two sessions in one forward against the two one by one."""
        from peft import LoraConfig, TaskType, get_peft_model

        from care.model.fused import apply_liger, choose_fused, decoder_of, fused_head_loss, head_of, liger_rope
        from care.model.packing import concat_packed, pack_by_session, packed_inputs, packed_loss, use_packed_attention
        from care.model.precision import MasterWeights
        from care.model.presets import load_base
        from care.model.prompts import build_examples

        sessions, _ = _sessions(state["builder"], 2, 13, tokens)
        examples, _ = build_examples(sessions, state["builder"], "rationale")
        packs = pack_by_session(examples)
        model, _ = load_base(base, params, dev, training=True)
        use_packed_attention(model)
        torch.manual_seed(0)  # random B, not the zero init: every adapter weight gets a gradient
        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=list(params.lora.target_modules),
                                                 init_lora_weights=False))
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        sw = float(params.train.score_weight)
        bf16 = dev == "cuda"

        def grads(loss_fn, master=None):
            loss = loss_fn()
            loss.backward()
            if master is None:
                out = [p.grad.float().clone() for p in trainable]
                for p in trainable:
                    p.grad = None
            else:
                master.accumulate()
                out = [m.grad.clone() for m in master.master]
                torch._foreach_zero_([m.grad for m in master.master])
            return float(loss.detach()), out

        def rel(a, b):
            (la, ga), (lb, gb) = a, b
            scale = max(float(g.abs().max()) for g in ga)
            return {"loss": round(abs(la - lb) / abs(la), 6),
                    "gradients": round(max(float((x - y).abs().max()) for x, y in zip(ga, gb)) / scale, 6)}

        one = packs[0]
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            reference = grads(lambda: packed_loss(model, one, dev, sw)[0])
        master = MasterWeights(trainable) if bf16 else None
        fast = grads(lambda: packed_loss(model, one, dev, sw)[0], master)
        out = {"bf16_adapters_vs_float32_autocast": rel(reference, fast)}
        separate = grads(lambda: sum(packed_loss(model, p, dev, sw)[0] for p in packs), master)
        together = grads(lambda: packed_loss(model, concat_packed(packs), dev, sw)[0], master)
        out["two_sessions_one_forward_vs_one_by_one"] = rel(separate, together)
        fused = choose_fused(params, model.config.model_type, dev, 1)
        if fused.kind == "liger":
            apply_liger(model)
            decoder, head = decoder_of(model), head_of(model)

            def fused_loss():
                x = packed_inputs(model, one, dev, sw)
                hidden = decoder(input_ids=x.ids, position_ids=x.positions, use_cache=False, **x.attention)
                return fused_head_loss(hidden.last_hidden_state[0], head.weight, x.next_labels, x.keep, sw)

            with liger_rope(model.config.model_type):
                out["liger_vs_plain_bf16"] = rel(fast, grads(fused_loss, master))
        else:
            out["liger_vs_plain_bf16"] = {"skipped": fused.reason}
        del model, master, trainable
        if dev == "cuda":
            torch.cuda.empty_cache()
        return out

    run.stage("equivalence", equivalence)

    def score() -> dict:
        from care.evaluation.torch_scoring import score_sessions
        from care.model.presets import load_base

        from naive_generate import naive_scores

        builder, tok = state["builder"], state["tokenizer"]
        sessions, mean_prefix = _sessions(builder, settings["shared"], 23, tokens)
        model, _ = load_base(base, None, dev)
        naive_scores(model, tok, builder, sessions[:1])  # warm-up: kernels, allocator
        _cuda_sync(dev)
        t = time.perf_counter()
        naive = naive_scores(model, tok, builder, sessions[: settings["naive"]])
        _cuda_sync(dev)
        naive_s = time.perf_counter() - t
        out = {"dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "mean_transcript_tokens":
               round(mean_prefix, 1), "naive_generate": {"sessions": settings["naive"],
                                                         "sessions_per_s": round(settings["naive"] / naive_s, 3)}}
        for session_batch, rows in settings["grid"]:
            if run.elapsed() + 20 > args.deadline_s:
                out[f"shared_cache_session_batch_{session_batch}"] = {"status": "skipped", "reason": "deadline"}
                continue
            try:
                score_sessions(model, tok, builder, sessions[:session_batch], session_batch=session_batch,
                               batch_size=rows, progress=False)
                _cuda_sync(dev)
                if dev == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                shared = score_sessions(model, tok, builder, sessions, session_batch=session_batch, batch_size=rows,
                                        progress=False)
                _cuda_sync(dev)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch; the others still count
                traceback.print_exc()
                out[f"shared_cache_session_batch_{session_batch}"] = {"status": "failed",
                                                                      "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                if dev == "cuda":
                    torch.cuda.empty_cache()
                continue
            seconds = time.perf_counter() - t
            diff = max(abs(row[i][0] - s.items[i].expected) for row, s in zip(naive, shared) for i in row)
            out[f"shared_cache_session_batch_{session_batch}"] = {
                "sessions": len(sessions), "item_rows_per_pass": rows, "sessions_per_s": round(len(sessions) / seconds, 3),
                "speedup_vs_naive": round(len(sessions) / seconds / (settings["naive"] / naive_s), 2),
                "max_expected_diff_vs_naive": round(diff, 6),
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None}
            run.log(f"  session batch {session_batch}: {len(sessions) / seconds:.2f} sessions/s")
        del model
        if dev == "cuda":
            torch.cuda.empty_cache()
        return out

    run.stage("score", score)

    def merge() -> dict:
        from care.release import merge_adapter

        short, _ = _sessions(state["builder"], 1, 31, utterances=settings["parity_utterances"])
        enc = state["builder"].encode(short[0])
        info = merge_adapter(base, adapter, merged, [enc.prefix + enc.items["1"]],
                             max_diff=params.release.merge_max_logit_diff)
        shutil.rmtree(base, ignore_errors=True)  # disk: the float32 merge is twice the base
        return {**info, "merged_bytes": sum(f.stat().st_size for f in merged.iterdir())}

    run.stage("merge", merge, disk_bytes=4 * (n_params or approx_params))

    def export() -> dict:
        from care.release import export_onnx

        info = export_onnx(merged, onnx_dir, device=dev, dtype="fp16")
        return {k: info[k] for k in ("dtype", "device", "onnx_bytes", "external_data", "attention", "logits")}

    run.stage("export", export, disk_bytes=2 * (n_params or approx_params))

    def parity() -> dict:
        import onnxruntime

        from care.errors import CareError
        from care.release import check_parity

        ort_device = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
        n = 1 if shape == "8b" else 2
        held, mean_prefix = _sessions(state["builder"], n, 41, utterances=settings["parity_utterances"])
        rel = params.release
        try:
            result = check_parity(merged, onnx_dir, held, instrument, state["builder"].config,
                                  max_logit_diff=rel.fp16_max_logit_diff, max_score_diff=rel.fp16_max_score_diff,
                                  device=ort_device, torch_device=dev)
            result["passed"] = True
        except CareError as exc:  # over the fp16 thresholds: the numbers are in the message
            result = {"passed": False, "message": str(exc), "device": ort_device}
        return {**result, "mean_transcript_tokens": round(mean_prefix, 1),
                "thresholds": {"max_logit_diff": rel.fp16_max_logit_diff, "max_score_diff": rel.fp16_max_score_diff}}

    run.stage("parity", parity)
    stages = run.figures["stages"]
    failed = [s for s in args.stages if stages.get(s, {}).get("status") == "failed"]
    run.log(f"figures in {args.out}; " + ", ".join(f"{s}: {stages[s]['status']}" for s in args.stages if s in stages))
    return 1 if failed else 0


def _real_params(base: Path, steps: int, max_length: int, overrides: dict):
    """The params a real preset (llama-3.1-8b-instruct) resolves to with `base` as model.base, `steps` optimizer
    steps and `max_length`, plus dotted `overrides`: the recipe `care train` would run."""
    from care.params import Params

    tree: dict = {"model": {"preset": "llama-3.1-8b-instruct", "base": str(base), "max_length": max_length},
                  "train": {"max_steps": steps}}
    for key, value in overrides.items():
        section, field = key.split(".")
        tree.setdefault(section, {})[field] = value
    return Params.model_validate(tree)


def _approx_params(config) -> int:
    h, i, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    head = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head
    embeddings = vocab * h * (1 if config.tie_word_embeddings else 2)
    return layers * (2 * h * config.num_attention_heads * head + 2 * h * kv + 3 * h * i) + embeddings


if __name__ == "__main__":
    sys.exit(main())
