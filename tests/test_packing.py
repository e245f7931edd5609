"""Session packing: the packed layout, and the equivalence the layout promises: the loss and the gradients
(LoRA and full fine-tuning; the structured packed attention, and the dense 4-D mask under SDPA and eager)
of one packed session equal those of its per-item examples batched together with the same token
weighting, to 1e-5 relative in float32."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from care.errors import CareError  # noqa: E402
from care.model.packing import (block_mask, pack_by_session, pack_session, packed_loss,  # noqa: E402
                          use_packed_attention)
from care.model.prompts import IGNORE_INDEX  # noqa: E402
from test_training import _params, base  # noqa: E402,F401  (the module-scoped tiny base fixture)

REL = 1e-5  # float32 tolerance, relative to the largest value compared


def _session(examples):
    sid = examples[0].session_id
    return [e for e in examples if e.session_id == sid]


def _model(path, implementation: str, finetune: str):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager" if implementation == "eager"
                                                 else "sdpa", dtype=torch.float32)
    if implementation == "packed":
        assert use_packed_attention(model) == "sdpa"
    if finetune == "lora":  # random B (not the zero init), or every A gradient would be zero on both sides
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                            init_lora_weights=False)
        model = get_peft_model(model, config)
    model.eval()  # no dropout: both sides must see the same function
    return model


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss_sum, weight = fn()
    (loss_sum / weight).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss_sum.detach()), weight, grads


def test_layout_each_item_sees_exactly_its_example(base):  # noqa: F811
    _, _, examples = base
    group = _session(examples)
    packed = pack_session(group)
    assert packed.n_items == len(group) == 12
    shared = packed.blocks.count(0)
    assert shared > 1 and len(packed.input_ids) == shared + sum(len(e.input_ids) - shared for e in group)
    assert len(packed.input_ids) < sum(len(e.input_ids) for e in group)
    mask = block_mask(packed.blocks, "sdpa", torch.float32)[0, 0]
    for k, e in enumerate(group, start=1):
        rows = [t for t, b in enumerate(packed.blocks) if b == k]
        # the tokens an item's last token attends to, with their positions, are its example
        visible = mask[rows[-1]].nonzero(as_tuple=True)[0].tolist()
        assert [packed.input_ids[t] for t in visible] == e.input_ids
        assert [packed.position_ids[t] for t in visible] == list(range(len(e.input_ids)))
        assert [packed.labels[t] for t in visible] == e.labels
        other = [t for t, b in enumerate(packed.blocks) if b not in (0, k)]
        assert not mask[rows][:, other].any()
    # the prefix is plain causal
    assert torch.equal(mask[:shared, :shared], torch.ones(shared, shared, dtype=torch.bool).tril())
    # every item's first target is predicted from inside its own block
    for t, lab in enumerate(packed.labels):
        if lab != IGNORE_INDEX:
            assert packed.blocks[t - 1] == packed.blocks[t] != 0


def test_pack_by_session_groups_and_refuses_mixing(base):  # noqa: F811
    _, _, examples = base
    packs = pack_by_session(examples)
    assert [p.session_id for p in packs] == list(dict.fromkeys(e.session_id for e in examples))
    other = next(e for e in examples if e.session_id != examples[0].session_id)
    with pytest.raises(CareError, match="several sessions"):
        pack_session([examples[0], other])


@pytest.mark.parametrize("implementation", ["packed", "sdpa", "eager"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_packed_loss_and_gradients_equal_per_item(base, implementation, finetune):  # noqa: F811
    from care.model.item_layout import collate, target_loss

    path, tok, examples = base
    group = _session(examples)
    model = _model(path, implementation, finetune)
    sw = 30.0
    a_loss, a_w, a_grads = _loss_and_grads(model, lambda: target_loss(model, collate(group, tok.pad_token_id), sw))
    b_loss, b_w, b_grads = _loss_and_grads(model, lambda: packed_loss(model, pack_session(group), "cpu", sw))
    assert a_w == b_w == sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in group) + (sw - 1) * 12
    assert abs(a_loss - b_loss) <= REL * abs(a_loss)
    assert a_grads.keys() == b_grads.keys() and len(a_grads) > 0
    if finetune == "lora":
        assert all("lora_" in n for n in a_grads)
    scale = max(float(g.abs().max()) for g in a_grads.values())
    assert scale > 0
    worst = max(float((a_grads[n] - b_grads[n]).abs().max()) for n in a_grads)
    assert worst <= REL * scale, f"gradient differs by {worst:.3g} (scale {scale:.3g})"


def test_flash_attention_is_refused_with_a_clear_message():
    with pytest.raises(CareError, match="4-D mask"):
        block_mask([0, 0, 1, 2], "flash_attention_2", torch.float32)


def test_eager_mask_is_additive():
    m = block_mask([0, 0, 1, 1, 2], "eager", torch.float32)[0, 0]
    assert m.dtype == torch.float32 and m[4, 4] == 0 and m[4, 0] == 0
    assert m[4, 2] == torch.finfo(torch.float32).min and m[0, 1] == torch.finfo(torch.float32).min


def test_finetune_with_session_packing(base, tmp_path):  # noqa: F811
    from care.model.training import finetune

    path, tok, examples = base
    p = _params(tmp_path, packing="session", max_steps=3, lr=2e-2)
    p.train.batch_size, p.train.grad_accum = 6, 4  # 24 items per step: two sessions of 12
    s1 = finetune(path, examples, p, tmp_path / "a")
    s2 = finetune(path, examples, p, tmp_path / "b")
    assert s1["packing"] == "session" and s1["sessions_per_step"] == 2 and s1["steps"] == 3
    assert s1["final_loss"] == s2["final_loss"]
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    item = finetune(path, examples, _params(tmp_path, packing="item", share_prefix=False, max_steps=3, lr=2e-2,
                                            batch_size=6, grad_accum=4), tmp_path / "c")
    # same items per step; the packed layout processes each trained session's prefix once
    assert s1["train_tokens"] < item["train_tokens"]


def test_packed_attention_under_gradient_checkpointing(base):  # noqa: F811
    """The block structure reaches every layer when activations are recomputed in the backward pass."""
    path, tok, examples = base
    group = _session(examples)
    plain = _model(path, "packed", "lora")
    _, _, want = _loss_and_grads(plain, lambda: packed_loss(plain, pack_session(group), "cpu", 30.0))
    ckpt = _model(path, "packed", "lora")
    ckpt.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt.train()  # checkpointing only runs in training mode (LoRA dropout is 0, so still deterministic)
    assert ckpt.base_model.model.is_gradient_checkpointing
    _, _, got = _loss_and_grads(ckpt, lambda: packed_loss(ckpt, pack_session(group), "cpu", 30.0))
    scale = max(float(g.abs().max()) for g in want.values())
    assert max(float((want[n] - got[n]).abs().max()) for n in want) <= REL * scale


@pytest.mark.parametrize("share_prefix", [True, False])
def test_session_layout_trains_the_same_weights_when_steps_hold_the_same_items(base, tmp_path, share_prefix):  # noqa: F811
    """End to end through `finetune`: with every step holding all sessions (so order inside a step is all
    that differs) and no dropout, three optimizer steps in either layout give the same adapter."""
    from safetensors.torch import load_file

    from care.model.training import finetune

    path, tok, examples = base
    n_sessions = len({e.session_id for e in examples})
    weights = {}
    for packing in ("session", "item"):
        p = _params(tmp_path, packing=packing, share_prefix=share_prefix, max_steps=3, lr=2e-2, batch_size=12,
                    grad_accum=n_sessions)
        stats = finetune(path, examples, p, tmp_path / packing)
        assert stats["packing"] == packing and stats["steps"] == 3
        weights[packing] = load_file(str(tmp_path / packing / "adapter_model.safetensors"))
    a, b = weights["session"], weights["item"]
    assert a.keys() == b.keys()
    for name in a:
        scale = float(b[name].abs().max())
        assert float((a[name] - b[name]).abs().max()) <= 1e-4 * max(scale, 1e-6), name


def test_the_shared_prefix_runs_its_micro_batches_packed_any_number_a_forward(base, tmp_path):  # noqa: F811
    """The item layout with `share_prefix`: each micro-batch (some of one session's items) runs packed behind its
    transcript; one or three micro-batches a forward train the same adapter, on fewer tokens than without sharing."""
    from safetensors.torch import load_file

    from care.model.training import finetune

    path, tok, examples = base
    stats, weights = {}, {}
    for k in (1, 3):
        p = _params(tmp_path, packing="item", share_prefix=True, max_steps=2, lr=2e-2, batch_size=5, grad_accum=3,
                    sessions_per_forward=k)
        stats[k] = finetune(path, examples, p, tmp_path / f"k{k}")
        weights[k] = load_file(str(tmp_path / f"k{k}" / "adapter_model.safetensors"))
    assert stats[1]["shared_prefix"] is True and stats[1]["micro_batches_per_forward"] == 1
    assert stats[3]["micro_batches_per_forward"] == 3 and stats[1]["items"] == stats[3]["items"]
    for name in weights[1]:
        scale = float(weights[1][name].abs().max())
        assert float((weights[1][name] - weights[3][name]).abs().max()) <= 1e-4 * max(scale, 1e-6), name
    plain = finetune(path, examples, _params(tmp_path, packing="item", share_prefix=False, max_steps=2, lr=2e-2,
                                             batch_size=5, grad_accum=3), tmp_path / "plain")
    assert plain["shared_prefix"] is False and plain["micro_batches_per_forward"] is None
    assert stats[3]["train_tokens"] <= stats[1]["train_tokens"] < plain["train_tokens"]


@pytest.mark.parametrize("implementation", ["packed", "sdpa", "eager"])
def test_several_sessions_in_one_forward_equal_the_sessions_one_by_one(base, implementation):  # noqa: F811
    """`concat_packed`: sessions of different lengths in one sequence give the sum of their losses and gradients
    (each item sees only its own session's prefix and itself), to 1e-5 relative in float32."""
    from care.model.packing import concat_packed

    path, tok, examples = base
    packs = pack_by_session(examples)[:3]
    assert len({p.blocks.count(0) for p in packs}) > 1  # prefixes of different lengths: padding is exercised
    model = _model(path, implementation, "lora")
    sw = 30.0

    def one_by_one():
        parts = [packed_loss(model, p, "cpu", sw) for p in packs]
        return sum(x[0] for x in parts), sum(x[1] for x in parts)

    a_loss, a_w, a_grads = _loss_and_grads(model, one_by_one)
    b_loss, b_w, b_grads = _loss_and_grads(model, lambda: packed_loss(model, concat_packed(packs), "cpu", sw))
    assert a_w == b_w
    assert abs(a_loss - b_loss) <= REL * abs(a_loss)
    scale = max(float(g.abs().max()) for g in a_grads.values())
    worst = max(float((a_grads[n] - b_grads[n]).abs().max()) for n in a_grads)
    assert worst <= REL * scale, f"gradient differs by {worst:.3g} (scale {scale:.3g})"
