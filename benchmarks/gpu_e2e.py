"""`care train` and `care score` end to end through the real CLI, on a local random-weight base of a real shape.

    python benchmarks/gpu_e2e.py --shape 1b --device cuda --out e2e.json    # what benchmarks/gpu_e2e.sh runs on a GPU
    python benchmarks/gpu_e2e.py --shape tiny --device cpu                   # the same steps on CPU (the test suite)

Steps, each a subprocess of the `care` command (`python -m care_cli.main`), in a private work directory with its
own ZenML store and cache:
  base     a randomly initialised Llama of the shape (benchmarks/random_llama.py; `1b` is Llama-3.2-1B's, tied
           embeddings, over 2 GB in fp16) with a tokenizer trained here, saved as a model directory: the
           `model.base` a user gives
  corpus   `care synth`: a CI-sized corpus (`--sessions`, 3 per client)
  train    `care train` with `model.preset=llama-3.1-8b-instruct` on that base (the real preset's settings,
           resolved from params.yaml), 2 folds, `--steps` steps a fit, a gate set to pass, the release exported
           on the device (`release.export_device`: fp16 on CUDA), registered in the ZenML registry
  models   `care models list`: the registered version
  score    `care score --device <device>` on the release (ONNX Runtime) over the corpus, then over
           `--speed-sessions` sessions lengthened to `--transcript-tokens` (sessions/s)

Writes the figures as JSON after every step (`--out`) and ends with `gpu_e2e: ok` or `gpu_e2e: failed at STEP`.
No transcript text is printed: the commands print counts and paths only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

SHAPES = {"1b": dict(sessions=24, steps=3, speed_sessions=32, transcript_tokens=1500, session_batch=8),
          "tiny": dict(sessions=12, steps=2, speed_sessions=4, transcript_tokens=200, session_batch=2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="1b")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--work", type=Path, default=None, help="work directory (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=None, help="figures (JSON)")
    ap.add_argument("--timeout-s", type=float, default=540.0, help="stop a step that would run past this")
    args = ap.parse_args(argv)
    settings = SHAPES[args.shape]
    keep = args.work is not None
    work = Path(args.work or tempfile.mkdtemp(prefix="care-e2e-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"shape": args.shape, "device": args.device, "settings": settings, "steps": {}}
    t0 = time.monotonic()
    env = _environment(work)
    failed = None
    try:
        for name, step in (("base", _base), ("corpus", _corpus), ("train", _train), ("models", _models),
                           ("score", _score)):
            started = time.monotonic()
            left = args.timeout_s - (started - t0)
            try:
                result = step(args, settings, work, env, left)
            except StepFailed as exc:
                figures["steps"][name] = {"status": "failed", "seconds": round(time.monotonic() - started, 1),
                                          **exc.figures}
                failed = name
            except Exception as exc:  # noqa: BLE001 - a bug in a step still leaves the figures of the others
                import traceback

                traceback.print_exc()
                figures["steps"][name] = {"status": "failed", "seconds": round(time.monotonic() - started, 1),
                                          "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                failed = name
            else:
                figures["steps"][name] = {"status": "done", "seconds": round(time.monotonic() - started, 1), **result}
            print(f"[{time.monotonic() - t0:7.1f} s] {name}: {json.dumps(figures['steps'][name])[:400]}", flush=True)
            _save(args.out, figures)
            if failed:
                break
    finally:
        figures["elapsed_s"] = round(time.monotonic() - t0, 1)
        _save(args.out, figures)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print("gpu_e2e: ok" if not failed else f"gpu_e2e: failed at {failed}")
    return 0 if not failed else 1


class StepFailed(Exception):
    def __init__(self, figures: dict):
        super().__init__(figures.get("error", "failed"))
        self.figures = figures


def _environment(work: Path) -> dict:
    """This run's own ZenML store, cache and quiet analytics; one repository initialised in it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_STORE_", "ZENML_SERVER"))}
    env.update({"ZENML_CONFIG_PATH": str(work / "zenml" / "config"),
                "ZENML_REPOSITORY_PATH": str(work / "zenml" / "repo"),
                "ZENML_LOCAL_STORES_PATH": str(work / "zenml" / "config" / "local_stores"),
                "ZENML_ANALYTICS_OPT_IN": "false", "ZENML_LOGGING_VERBOSITY": "WARN",
                "ZENML_ENABLE_RICH_TRACEBACK": "false", "AUTO_OPEN_DASHBOARD": "false",
                "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false", "ORT_DISABLE_TELEMETRY": "1",
                "HF_HUB_OFFLINE": "1", "CARE_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    (work / "zenml" / "repo").mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", "from pathlib import Path; from zenml.client import Client; Client.initialize(root=Path(%r))"
                    % str(work / "zenml" / "repo")], env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def _care(args: list[str], env: dict, cwd: Path, timeout: float) -> tuple[int, str, float]:
    """Run `care ARGS`; (exit code, the last lines of its output, seconds)."""
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "care_cli.main", *args], env=env, cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=max(10.0, timeout))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        return 124, "\n".join(tail.splitlines()[-15:]), time.monotonic() - started
    return proc.returncode, "\n".join(proc.stdout.splitlines()[-15:]), time.monotonic() - started


def _checked(args: list[str], env: dict, cwd: Path, timeout: float) -> tuple[str, float]:
    code, tail, seconds = _care(args, env, cwd, timeout)
    print(tail, flush=True)
    if code != 0:
        raise StepFailed({"command": " ".join(["care", *args[:2]]), "exit_code": code, "output_tail": tail})
    return tail, seconds


def _base(args, settings, work: Path, env, left) -> dict:
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
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = random_llama(args.shape, args.device, dtype, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    out = work / "base"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n, "tied_embeddings": _tied(out),
            "bytes": sum(f.stat().st_size for f in out.iterdir())}


def _tied(base: Path) -> bool:
    return bool(json.loads((base / "config.json").read_text("utf-8")).get("tie_word_embeddings"))


def _corpus(args, settings, work: Path, env, left) -> dict:
    tail, seconds = _checked(["synth", "--out", str(work / "data"), "--sessions", str(settings["sessions"]),
                              "--clients", str(settings["sessions"] // 3), "--seed", "3"], env, work, left)
    from care.data.synth import generate
    from bench_sessions import lengthen

    from care.model.presets import load_tokenizer
    from care.model.prompts import PromptBuilder, PromptConfig
    from care.params import ModelParams
    from care.data.instrument import load_instrument

    builder = PromptBuilder(load_tokenizer(work / "base"), load_instrument("wai-sr"),
                            PromptConfig.from_params(ModelParams(max_length=8192, target_tokens=128)))
    plain, _ = generate(n_sessions=settings["speed_sessions"], language="zh", seed=41, mean_utterances=78)
    chars, mean = 20, 0.0
    for _ in range(2):  # scale the utterance length once from a first measurement
        long = lengthen(plain, 78, max(2, chars), 41)
        mean = sum(len(builder.encode(s).prefix) for s in long) / len(long)
        chars = round(chars * settings["transcript_tokens"] / mean)
    speed = work / "speed" / "sessions.jsonl"
    speed.parent.mkdir(parents=True, exist_ok=True)
    speed.write_text("".join(s.model_dump_json(exclude_none=True) + "\n" for s in long), "utf-8")
    return {"sessions": settings["sessions"], "speed_sessions": len(long), "speed_transcript_tokens": round(mean, 1)}


def _params(args, settings, work: Path) -> Path:
    """The run's params: params.yaml's real-preset defaults on the local base, CI-sized, with a gate set to pass."""
    import yaml

    from care.safe_yaml import load_yaml_file

    tree = {
        "data": {"path": str(work / "data" / "sessions.jsonl"), "instrument": "wai-sr"},
        "model": {"preset": "llama-3.1-8b-instruct", "base": str(work / "base"), "max_length": 2048},
        "train": {"max_steps": settings["steps"]},
        "cv": {"folds": 2},
        "eval": {"rationale_sample": 4, "rationale_max_new_tokens": 24},
        "gate": {"min_pearson": {"*": -1.0}, "max_mse": {"*": 100.0}, "beat_on_pearson": [], "beat_on_mse": []},
        "release": {"out": str(work / "release"), "export_device": args.device},
        "registry": {"model_name": "care-alliance-e2e"},
    }
    shipped = load_yaml_file(ROOT / "params.yaml", "params")
    for section, values in tree.items():
        shipped.setdefault(section, {}).update(values)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(shipped, sort_keys=False), "utf-8")
    return path


def _train(args, settings, work: Path, env, left) -> dict:
    params = _params(args, settings, work)
    tail, seconds = _checked(["train", "--params", str(params), "--metrics-dir", str(work / "metrics"),
                              "--plots-dir", str(work / "plots")], env, work, left)
    manifest = json.loads((work / "release" / "manifest.json").read_text("utf-8"))
    cv = json.loads((work / "metrics" / "cv.json").read_text("utf-8"))
    fits = sorted((work / "cache").rglob("train_stats.json"))
    stats = [json.loads(f.read_text("utf-8")) for f in fits]
    return {"seconds_care_train": round(seconds, 1), "output_tail": tail,
            "export": {k: manifest.get(k) for k in ("export", "onnx", "parity", "scoring") if k in manifest},
            "gate_passed": cv.get("gate", {}).get("passed") if isinstance(cv.get("gate"), dict) else cv.get("gate"),
            "fits": [{k: s.get(k) for k in ("packing", "sessions_per_step", "sessions_per_forward", "gradient_checkpointing",
                                            "precision", "fused_kernels", "tokens_per_s", "peak_gpu_gib", "steps")}
                     for s in stats]}


def _models(args, settings, work: Path, env, left) -> dict:
    tail, _ = _checked(["models", "list", "--model-name", "care-alliance-e2e"], env, work, left)
    return {"output_tail": tail}


def _score(args, settings, work: Path, env, left) -> dict:
    out = {}
    for name, data, batch in (("corpus", work / "data" / "sessions.jsonl", 1),
                              ("speed", work / "speed" / "sessions.jsonl", settings["session_batch"])):
        scores = work / f"scores-{name}.jsonl"
        tail, seconds = _checked(["score", str(data), "--model", str(work / "release"), "--out", str(scores),
                                  "--device", args.device, "--session-batch", str(batch)], env, work, left)
        n = sum(1 for _ in data.open(encoding="utf-8"))
        lines = scores.read_text("utf-8").splitlines()
        if len(lines) != n:
            raise StepFailed({"error": f"{name}: {len(lines)} scored lines for {n} sessions"})
        out[name] = {"sessions": n, "session_batch": batch, "seconds": round(seconds, 1),
                     "sessions_per_s_with_startup": round(n / seconds, 3), "output_tail": tail}
    return out


def _save(out: Path | None, figures: dict) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(figures, indent=2) + "\n", "utf-8")
        os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(main())
