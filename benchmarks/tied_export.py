"""The ONNX export of a tied-embedding model over 2 GB, with its parity check: what Llama-3.2-1B/3B and Qwen2.5-0.5B
to 3B need (their LM head is the input embedding). Reproduces on a CPU in a few minutes.

    python benchmarks/tied_export.py                  # Llama-3.2-1B's shape (2.3 GiB in fp16), on the CPU
    python benchmarks/tied_export.py --device cuda    # the same on a GPU

Builds a randomly initialised tied Llama (benchmarks/random_llama.py), saves it as a merged model with a tokenizer trained here, exports it through
`care.release.export_onnx` and checks parity (`care.release.check_parity`: ONNX Runtime with the shared transcript
cache against PyTorch float32, on a short synthetic session) against the fp16 thresholds. Prints one line per
stage and a last line `tied_export: ok|failed`; `--out FILE` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_llama import SHAPES, llama_config, random_llama  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[s for s in SHAPES if SHAPES[s]["tie_word_embeddings"]], default="1b")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="where the weights go (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    import torch

    from care.data.instrument import load_instrument
    from care.data.synth import generate
    from care.model.prompts import PromptConfig, item_block, render_transcript
    from care.model.tiny import train_tokenizer
    from care.params import Params
    from care.release import check_parity, export_onnx

    work = Path(args.work or tempfile.mkdtemp(prefix="care-tied-export-"))
    merged, onnx_dir = work / "merged", work / "onnx"
    figures: dict = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "stages": {}}
    status = 0
    try:
        instrument = load_instrument("wai-sr")
        sessions, _ = generate(n_sessions=24, language="zh", seed=7, mean_utterances=12)
        texts = [render_transcript(s) for s in sessions] + [item_block(instrument, i, "zh") for i in instrument.item_ids]
        tok = train_tokenizer(texts + ["0123456789\n"] * 10, 2048)
        t = time.perf_counter()
        dtype = torch.float16 if args.dtype == "fp16" else torch.float32
        model = random_llama(args.shape, "cpu", dtype, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(merged, safe_serialization=True)
        tok.save_pretrained(merged)
        del model
        figures["stages"]["build"] = {"seconds": round(time.perf_counter() - t, 1), "weights_gib": round(size / 2**30, 2)}
        _line("build", figures["stages"]["build"])
        t = time.perf_counter()
        info = export_onnx(merged, onnx_dir, device=args.device, dtype=args.dtype)
        figures["stages"]["export"] = {"seconds": round(time.perf_counter() - t, 1), **{k: info[k] for k in (
            "onnx_bytes", "external_data", "files", "tied_embeddings")}}
        _line("export", figures["stages"]["export"])
        t = time.perf_counter()
        params = Params()
        rel = params.release
        short, _ = generate(n_sessions=1, language="zh", seed=31, mean_utterances=10)
        config = PromptConfig.from_params(params.model.model_copy(update={"max_length": 1024, "target_tokens": 64}))
        parity = check_parity(merged, onnx_dir, short, instrument, config,
                              max_logit_diff=rel.fp16_max_logit_diff if args.dtype == "fp16" else rel.max_logit_diff,
                              max_score_diff=rel.fp16_max_score_diff if args.dtype == "fp16" else rel.max_score_diff,
                              device="cpu", torch_device=args.device)
        figures["stages"]["parity"] = {"seconds": round(time.perf_counter() - t, 1), **parity}
        _line("parity", figures["stages"]["parity"])
    except Exception as exc:  # noqa: BLE001 - the figures say what failed
        traceback.print_exc()
        figures["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        status = 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n", "utf-8")
    print(f"tied_export: {'ok' if status == 0 else 'failed'}")
    return status


def _line(stage: str, values: dict) -> None:
    print(f"{stage}: " + ", ".join(f"{k}={v}" for k, v in values.items() if k != "files"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
