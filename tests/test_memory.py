"""Gradient checkpointing and sessions per forward decided by memory (care.model.memory): what the probes measure,
how the decision follows the cap, and that a real preset's fine-tune records both with its reason."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from care.model.memory import GIB, decide, extrapolate, saved_bytes  # noqa: E402
from care.model.packing import cut_prefix, pack_by_session, packed_loss, use_packed_attention  # noqa: E402
from test_training import _params, base  # noqa: E402,F401  (the module-scoped tiny base fixture)


def test_two_probes_predict_the_whole_sessions_saved_bytes(base):  # noqa: F811
    """Saved bytes grow linearly with the prefix: two cut probes extrapolate to the full session within 2%."""
    from transformers import AutoModelForCausalLM

    path, tok, examples = base
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="sdpa")
    use_packed_attention(model)
    model.train()
    unit = max(pack_by_session(examples), key=lambda p: len(p.input_ids))
    prefix = unit.blocks.count(0)

    def probe(packed):
        return saved_bytes(model, lambda: packed_loss(model, packed, "cpu", 30.0)[0])

    (small, _), (large, per_layer) = probe(cut_prefix(unit, 16)), probe(cut_prefix(unit, 32))
    full, full_layers = probe(unit)
    assert len(full_layers) == model.config.num_hidden_layers and 0 < sum(full_layers) < full
    predicted = extrapolate((16, small), (32, large), prefix)
    assert abs(predicted - full) <= 0.02 * full, (predicted, full)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert full < 50 * params  # parameters are never counted as saved activations


def test_the_decision_follows_the_cap():
    common = dict(resident=10 * GIB, unit=20 * GIB, unit_checkpointed=4 * GIB, layer_peak=GIB // 2, most=4)
    roomy = decide(cap=139 * GIB, forced=None, **common)
    assert roomy.checkpointing is False and roomy.sessions_per_forward == 4 and roomy.estimate <= 139 * GIB
    tight = decide(cap=60 * GIB, forced=None, **common)
    assert tight.checkpointing is False and tight.sessions_per_forward == 2
    small = decide(cap=24 * GIB, forced=None, **common)
    assert small.checkpointing is True and small.sessions_per_forward == 2 and "over" in small.reason
    forced = decide(cap=139 * GIB, forced=True, **common)
    assert forced.checkpointing is True and forced.sessions_per_forward == 4
    assert "model.gradient_checkpointing=true" in forced.reason
    assert set(roomy.as_dict()) >= {"checkpointing", "sessions_per_forward", "reason", "cap_gib", "estimate_gib"}


def test_a_real_bases_fine_tune_decides_by_memory_and_says_why(base, tmp_path):  # noqa: F811
    """The test base is not the shipped tiny base, so it is measured like a real preset's."""
    from care.model.training import finetune

    path, tok, examples = base
    roomy = finetune(path, examples, _params(tmp_path, packing="session", batch_size=12, grad_accum=2, max_steps=2),
                     tmp_path / "roomy")
    assert roomy["gradient_checkpointing"] is False and roomy["sessions_per_forward"] == 2
    assert roomy["memory"]["unit_saved_gib"] > 0 and "fit without checkpointing" in roomy["memory"]["reason"]
    tight = _params(tmp_path, packing="session", batch_size=12, grad_accum=2, max_steps=2)
    tight.train.memory_cap_gib = roomy["memory"]["resident_gib"] + 1e-4  # room for no activations at all
    tight_stats = finetune(path, examples, tight, tmp_path / "tight")
    assert tight_stats["gradient_checkpointing"] is True and tight_stats["sessions_per_forward"] == 1
    assert "over" in tight_stats["memory"]["reason"]
    assert abs(tight_stats["first_loss"] - roomy["first_loss"]) < 1e-4  # the same loss either way
