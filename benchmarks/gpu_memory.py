"""Memory the real presets need to train, export and score, estimated from their shapes (docs/gpu.md).

    python benchmarks/gpu_memory.py [--transcript-tokens 1500] [--item-tokens 110] [--session-batch 4]

Estimates, not measurements (benchmarks/gpu_pipeline.py measures the training peak on a lent GPU). Bytes:
bf16/fp16 2, fp32 4. Training is the pipeline's recipe: LoRA r16 on the seven projections (peft keeps the
adapter in fp32: weights, gradients and AdamW's two moments), bf16 base, gradient checkpointing (each
layer's input kept; one layer's activations live during its recompute), session packing (one session per
micro-batch), the LM head at target positions only (fp32 logits and their gradient). Full fine-tuning keeps
bf16 weights, gradients and AdamW moments (torch keeps moments in the parameter dtype). Scoring: the
transcript's key/values, copied under each of the 12 item rows of a batch, `--session-batch` sessions at once.
"""

from __future__ import annotations

import argparse

from random_llama import SHAPES

QWEN25_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False, "attention_bias": True}
PRESETS = {"llama-3.1-8b-instruct": SHAPES["8b"], "qwen2.5-7b-instruct": QWEN25_7B}
GB = 1e9
ITEMS, LORA_R, LORA_MODULES = 12, 16, ("q", "k", "v", "o", "gate", "up", "down")


def shape_numbers(s: dict) -> dict:
    h, i, layers, vocab = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    head = h // s["num_attention_heads"]
    kv = s["num_key_value_heads"] * head
    layer = 2 * h * h + 2 * h * kv + 3 * h * i
    params = layers * layer + vocab * h * (1 if s["tie_word_embeddings"] else 2)
    dims = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
    lora = layers * sum(LORA_R * (a + b) for a, b in (dims[m] for m in LORA_MODULES))
    return {"params": params, "lora": lora, "h": h, "i": i, "layers": layers, "vocab": vocab,
            "kv_bytes_per_token_bf16": 2 * layers * kv * 2}


def estimates(s: dict, transcript: int, item_tokens: int, session_batch: int) -> dict:
    n = shape_numbers(s)
    p, h, layers = n["params"], n["h"], n["layers"]
    tokens = transcript + ITEMS * item_tokens  # one packed session
    targets = ITEMS * (item_tokens // 2)
    checkpoints = layers * tokens * h * 2
    one_layer = tokens * (10 * h + 3 * n["i"]) * 2  # q/k/v/o, norms, residual and the three MLP projections
    logits = 2 * targets * n["vocab"] * 4
    activations = checkpoints + one_layer + logits
    lora_state = 4 * 4 * n["lora"]  # fp32 weights, gradients, two moments
    kv_row = (transcript + item_tokens) * n["kv_bytes_per_token_bf16"]
    return {
        "parameters_b": p / 1e9,
        "train_lora_gb": (2 * p + lora_state + activations) / GB,
        "train_full_gb": (2 * p + 2 * p + 4 * p + activations) / GB,
        "merge_host_gb": 4 * p / GB,
        "export_gpu_gb": 2 * p / GB,
        "export_host_gb": (4 * p + 2 * p) / GB,  # the fp32 merge read back, the fp16 graph serialised
        "disk_gb": {"merged_fp32": 4 * p / GB, "onnx_fp16": 2 * p / GB},
        "score_torch_gpu_gb": (2 * p + session_batch * ITEMS * kv_row) / GB,
        "score_ort_gpu_gb": (2 * p + 2 * session_batch * ITEMS * kv_row) / GB,  # gathered rows + present
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transcript-tokens", type=int, default=1500)
    ap.add_argument("--item-tokens", type=int, default=110, help="item prompt + target, per item")
    ap.add_argument("--session-batch", type=int, default=4)
    args = ap.parse_args()
    print("| preset | parameters | train LoRA (GPU) | train full (GPU) | merge fp32 (host RAM) | export fp16 "
          "(GPU / host RAM) | disk (merged fp32 + ONNX fp16) | score, PyTorch (GPU) | score, ONNX Runtime (GPU) |")
    print("|" + "---|" * 9)
    for name, shape in PRESETS.items():
        e = estimates(shape, args.transcript_tokens, args.item_tokens, args.session_batch)
        print(f"| {name} | {e['parameters_b']:.2f} B | {e['train_lora_gb']:.0f} GB | {e['train_full_gb']:.0f} GB | "
              f"{e['merge_host_gb']:.0f} GB | {e['export_gpu_gb']:.0f} / {e['export_host_gb']:.0f} GB | "
              f"{e['disk_gb']['merged_fp32']:.0f} + {e['disk_gb']['onnx_fp16']:.0f} GB | "
              f"{e['score_torch_gpu_gb']:.0f} GB | {e['score_ort_gpu_gb']:.0f} GB |")
    print(f"\n{args.transcript_tokens}-token transcripts, {ITEMS} items of {args.item_tokens} tokens (prompt + "
          f"target), {args.session_batch} sessions per scoring batch; estimates from the shapes.")


if __name__ == "__main__":
    main()
