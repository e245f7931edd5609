"""Randomly initialised Llama-shaped models for the GPU benchmarks (no hub: the shapes are written out here).

    "8b"   Llama-3.1-8B's exact shape (4096 hidden, 32 layers, 32 heads over 8 key/value heads, 128,256 vocab)
    "1b"   Llama-3.2-1B's (2048 hidden, 16 layers, 32 heads over 8, tied embeddings): a fast first pass
    "tiny" a toy of the same structure, to check the scripts on CPU

The weights are random (std 0.02), so the figures measure cost, never quality.
"""

from __future__ import annotations

_LLAMA3 = dict(vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
               bos_token_id=128000, eos_token_id=128001, hidden_act="silu", attention_bias=False, mlp_bias=False)
SHAPES: dict[str, dict] = {
    "8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
           "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}},
    "1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}},
    "tiny": {**_LLAMA3, "vocab_size": 4096, "max_position_embeddings": 8192, "hidden_size": 64,
             "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2},
}


def llama_config(shape: str, **overrides):
    """The LlamaConfig of `shape` (SDPA attention unless overridden)."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    return LlamaConfig(**{**SHAPES[shape], "attn_implementation": "sdpa", **overrides})


def random_llama(shape: str, device: str, dtype, seed: int = 0, **overrides):
    """A randomly initialised LlamaForCausalLM of `shape`, built directly on `device` in `dtype`."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(llama_config(shape, **overrides)).to(dtype)
