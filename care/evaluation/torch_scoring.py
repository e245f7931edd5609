"""Scoring held-out sessions in PyTorch: the `care.evaluation.readout` backend for a transformers causal LM.

The backend runs the decoder body and computes the LM head only at the last position (in float32, with the
model's final logit soft-capping). For a batch of item suffixes the transcript prefix's key/value cache is
broadcast over the rows without copying it (rows of several sessions are gathered on the device). The
shared cache is several times faster than each item's full prompt on its own (benchmarks/score_torch.py).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from care.data.schema import Session
from care.errors import CareError
from care.evaluation import readout
from care.evaluation.readout import SessionScore
from care.model.prompts import PromptBuilder


class TorchBackend:
    """A causal LM (plain or PeftModel-wrapped) as a `readout.Backend`: decoder body + last-position LM head."""

    def __init__(self, model):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = inner.get_decoder()
        self.head = inner.get_output_embeddings()
        if self.body is None or self.head is None:
            raise CareError("scoring needs a causal LM with a decoder body and an LM head")
        self.softcap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
        self.device = inner.get_input_embeddings().weight.device

    def forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past):
        import torch

        start = mask.shape[1] - ids.shape[1]
        out = self.body(
            input_ids=torch.as_tensor(ids, device=self.device),
            attention_mask=torch.as_tensor(mask, device=self.device),
            position_ids=torch.as_tensor(positions, device=self.device),
            past_key_values=past,
            cache_position=torch.arange(start, mask.shape[1], device=self.device),
            use_cache=True,
        )
        logits = self.head(out.last_hidden_state[:, -1]).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.cpu().numpy().astype(np.float64), out.past_key_values

    def select(self, past, rows: np.ndarray):
        import torch

        rows = np.asarray(rows, np.int64)
        kv = [(layer.keys, layer.values) for layer in past.layers]
        if (rows == rows[0]).all():  # one session's prefix under every row: a broadcast view, no copy
            r = int(rows[0])
            return _cache([(k[r : r + 1].expand(len(rows), -1, -1, -1), v[r : r + 1].expand(len(rows), -1, -1, -1))
                           for k, v in kv])
        index = torch.as_tensor(rows, device=self.device)
        return _cache([(k.index_select(0, index), v.index_select(0, index)) for k, v in kv])

    def empty_past(self, batch: int):
        return None


def _cache(kv):
    """A fresh cache holding these key/value tensors as they are (views stay views).

    The suffix pass's update concatenates onto them, which is the only copy of a broadcast prefix
    (DynamicCache(ddp_cache_data=...) would copy it once more first).
    """
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0], v[:, :, :0]) for k, v in kv])
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys, layer.values = k, v
    return cache


def eos_ids(model, tokenizer) -> set[int]:
    """The tokenizer's EOS and the model's generation-config EOS ids."""
    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
    return {e for e in eos if e is not None}


def score_sessions(model, tokenizer, builder: PromptBuilder, sessions: Iterable[Session], *, batch_size: int = 16,
                   rationales: bool = False, max_new_tokens: int = 96, shared_cache: bool = True,
                   progress: bool = True, grounded_quotes: bool = True, session_batch: int = 1) -> list[SessionScore]:
    """`readout.score_sessions` with this model. Deterministic; leaves the model's mode as found."""
    import torch

    backend = TorchBackend(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return readout.score_sessions(backend, builder, sessions, eos_ids=eos_ids(model, tokenizer),
                                          batch_size=batch_size, rationales=rationales, max_new_tokens=max_new_tokens,
                                          shared_cache=shared_cache, progress=progress,
                                          grounded_quotes=grounded_quotes, session_batch=session_batch)
    finally:
        model.train(was_training)
