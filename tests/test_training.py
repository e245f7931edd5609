"""Fine-tuning: target-only loss, determinism, safetensors adapters, full fine-tuning, the packing switch (layouts: test_packing.py)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from care.errors import CareError  # noqa: E402
from care.data.instrument import load_instrument  # noqa: E402
from care.model.prompts import IGNORE_INDEX, PromptBuilder, PromptConfig, build_examples  # noqa: E402
from care.params import ModelParams, Params  # noqa: E402
from care.data.schema import Session, Turn  # noqa: E402

WORDS = ["I feel", "stuck", "at work", "my counselor", "listened", "we agreed", "on goals", "it helped",
         "not sure", "tired", "the plan", "next week", "thank you", "that makes sense", "maybe"]


def _sessions(n: int, seed: int = 0) -> list[Session]:
    rng = random.Random(seed)
    out = []
    for s in range(n):
        turns = [Turn(speaker=("counselor", "client")[t % 2], text=" ".join(rng.choices(WORDS, k=6)))
                 for t in range(6)]
        ratings = {str(i): rng.randint(1, 5) for i in range(1, 13)}
        rationales = {str(i): " ".join(rng.choices(WORDS, k=4)) for i in range(1, 13)}
        out.append(Session(session_id=f"s{s}", client_id=f"c{s % 3}", language="en", turns=turns,
                           client_ratings=ratings, rationales=rationales))
    return out


def _params(tmp_path, **train) -> Params:
    p = Params()
    p.model.finetune = "lora"
    p.model.max_length = 1024
    p.lora.r = 4
    p.lora.alpha = 8
    p.lora.dropout = 0.0
    p.train.batch_size = 4
    p.train.grad_accum = 1
    p.train.lr = 5e-3
    p.train.max_steps = 3
    for k, v in train.items():
        setattr(p.train, k, v)
    return p


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small tokenizer + random Llama saved as a base directory, and examples built for it."""
    from care.data.prompt_texts import builtin_prompt_texts
    from care.model.prompts import item_block
    from care.model.tiny import random_model, train_tokenizer

    inst = load_instrument("wai-sr")
    en = builtin_prompt_texts("en")
    texts = [" ".join(WORDS)] * 20 + [en.speakers.counselor, en.speakers.client]
    texts += [item_block(inst, i, "en") for i in inst.item_ids] + [en.system, en.instruction]
    tok = train_tokenizer(texts, 500)
    model = random_model(tok, hidden_size=32, intermediate_size=64, layers=1, heads=2, max_position=1024, seed=1)
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    builder = PromptBuilder(tok, inst, PromptConfig.from_params(ModelParams(max_length=1024, target_tokens=24)))
    examples, _ = build_examples(_sessions(4), builder, "rationale")
    return path, tok, examples


def _adapter_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_loss_is_target_only(base):
    from care.model.presets import load_base
    from care.model.item_layout import collate, target_loss

    path, tok, examples = base
    model, _ = load_base(path, None, "cpu")
    batch = collate(examples[:3], tok.pad_token_id)
    loss_sum, n = target_loss(model, batch)
    # manual CE on exactly the target positions, full logits
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual, count = 0.0, 0
    for row, e in enumerate(examples[:3]):
        for t, lab in enumerate(e.labels):
            if lab != IGNORE_INDEX:
                manual += float(torch.nn.functional.cross_entropy(logits[row, t - 1][None], torch.tensor([lab])))
                count += 1
    assert n == count
    assert abs(float(loss_sum.detach()) - manual) < 1e-3 * max(1.0, manual)
    # the prompt's tokens never enter the loss: corrupting a prompt label that is masked changes nothing,
    # while the number of targets matches the non-ignored labels exactly
    assert count == sum(sum(1 for x in e.labels if x != IGNORE_INDEX) for e in examples[:3])
    e0 = examples[0]
    first_target = next(i for i, x in enumerate(e0.labels) if x != IGNORE_INDEX)
    assert all(x == IGNORE_INDEX for x in e0.labels[:first_target])
    assert e0.labels[first_target:] == e0.input_ids[first_target:]
    # pads are masked by position
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_a_shared_prefix_micro_batch_packed_matches_its_separate_examples(base):
    """The item layout's shared prefix: some of one session's items, in any order, packed behind their transcript
    give the loss and the number of target tokens of the same examples batched one by one."""
    from care.model.item_layout import collate, target_loss
    from care.model.packing import pack_session, packed_loss, shared_prefix_length
    from care.model.presets import load_base

    path, tok, examples = base
    model, _ = load_base(path, None, "cpu")
    group = [e for e in examples if e.session_id == examples[0].session_id][:5][::-1]
    shared = shared_prefix_length(group)
    first = min(next(i for i, x in enumerate(e.labels) if x != IGNORE_INDEX) for e in group)
    assert 1 < shared < first
    with torch.no_grad():
        a, na = packed_loss(model, pack_session(group), "cpu", 30.0)
        b, nb = target_loss(model, collate(group, tok.pad_token_id), 30.0)
    assert na == nb
    assert abs(float(a) - float(b)) < 1e-5 * float(b)


def test_the_head_on_target_rows_only_equals_the_union_of_positions(base, monkeypatch):
    """The LM head runs on each row's own targets; a model whose logits are not its output embedding of the
    last hidden state takes the union-of-positions path: the same loss and gradients either way."""
    from care.model.presets import load_base
    from care.model.item_layout import collate, target_loss

    path, tok, examples = base
    model, _ = load_base(path, None, "cpu")
    group = [e for e in examples if e.session_id == examples[0].session_id][:5]

    def loss_and_grad(fn):
        model.zero_grad()
        loss, n = fn()
        loss.backward()
        return float(loss.detach()), n, model.lm_head.weight.grad.clone()

    import care.model.item_layout as training

    calls = []
    real = training.weighted_ce_rows
    monkeypatch.setattr(training, "weighted_ce_rows", lambda *a: calls.append(1) or real(*a))
    rows = [loss_and_grad(lambda: target_loss(model, collate(group, tok.pad_token_id), 30.0))]
    assert len(calls) == 1
    monkeypatch.setattr(type(model), "get_output_embeddings", lambda self: None)
    union = [loss_and_grad(lambda: target_loss(model, collate(group, tok.pad_token_id), 30.0))]
    assert len(calls) == 1
    for (a, na, ga), (b, nb, gb) in zip(rows, union):
        assert na == nb
        assert abs(a - b) < 1e-5 * b
        assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-7)


def test_finetune_deterministic_and_reloads(base, tmp_path):
    from care.model.training import STATS_FILE, load_finetuned

    path, tok, examples = base
    from care.model.training import finetune

    p = _params(tmp_path)
    s1 = finetune(path, examples, p, tmp_path / "a1")
    s2 = finetune(path, examples, p, tmp_path / "a2")
    assert s1["steps"] == s2["steps"] == 3 and s1["final_loss"] == s2["final_loss"]
    for d in ("a1", "a2"):
        assert (tmp_path / d / "adapter_model.safetensors").is_file()
        assert (tmp_path / d / STATS_FILE).is_file()
        assert not list((tmp_path / d).glob("*.bin")) and not list((tmp_path / d).glob("*.pt"))
    t1, t2 = _adapter_tensors(tmp_path / "a1"), _adapter_tensors(tmp_path / "a2")
    assert t1.keys() == t2.keys() and t1
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    # a different seed gives different weights
    p3 = _params(tmp_path, seed=5)
    finetune(path, examples, p3, tmp_path / "a3")
    t3 = _adapter_tensors(tmp_path / "a3")
    assert any(not torch.equal(t1[k], t3[k]) for k in t1)
    # reload gives the same logits as the model right after training (re-run the in-memory model)
    m1, _ = load_finetuned(path, tmp_path / "a1")
    m2, _ = load_finetuned(path, tmp_path / "a2")
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        l1, l2 = m1(input_ids=ids).logits, m2(input_ids=ids).logits
    assert torch.equal(l1, l2)
    # and the adapter changed the model: differs from the bare base
    from care.model.presets import load_base

    b, _ = load_base(path, None, "cpu")
    with torch.no_grad():
        lb = b(input_ids=ids).logits
    assert not torch.allclose(l1, lb)


def test_training_lowers_loss(base, tmp_path):
    from care.model.training import finetune

    path, tok, examples = base
    p = _params(tmp_path, max_steps=12, lr=2e-2)
    stats = finetune(path, examples, p, tmp_path / "a")
    assert stats["final_loss"] < stats["first_loss"]
    assert stats["train_tokens"] > stats["target_tokens"] > 0


def test_full_finetune(base, tmp_path):
    from safetensors.torch import load_file

    from care.model.training import finetune, load_finetuned

    path, tok, examples = base
    p = _params(tmp_path, max_steps=2, share_prefix=False)
    p.model.finetune = "full"
    stats = finetune(path, examples, p, tmp_path / "full")
    assert stats["finetune"] == "full"
    out = tmp_path / "full"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    trained = load_file(str(out / "model.safetensors"))
    orig = load_file(str(path / "model.safetensors"))
    assert any(not torch.equal(trained[k], orig[k]) for k in orig)
    model, tok2 = load_finetuned(path, out)
    assert not model.training and tok2.pad_token_id == tok.pad_token_id


def test_batch_plan_deterministic():
    from care.model.plan import batch_plan

    lengths = [random.Random(3).randint(5, 50) for _ in range(37)]
    a = batch_plan(lengths, 4, seed=1, epochs=2)
    assert a == batch_plan(lengths, 4, seed=1, epochs=2)
    assert a != batch_plan(lengths, 4, seed=2, epochs=2)
    first = sorted(i for b in a[: len(a) // 2] for i in b)
    assert first == list(range(37))


def test_pad_token_never_eos():
    from care.model.presets import ensure_pad_token

    class Tok:
        def __init__(self):
            self.pad_token_id, self.eos_token_id = None, 2
            self.pad_token = None

        def get_vocab(self):
            return {"<|eot_id|>": 2, "<|reserved_special_token_0|>": 7}

    t = Tok()
    ensure_pad_token(t)
    assert t.pad_token == "<|reserved_special_token_0|>"


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["session", "item"])
def test_two_processes_give_the_one_process_adapter(base, tmp_path, packing):
    """`train.num_processes: 2` (accelerate launch, DDP over gloo on CPU) trains the same adapter as one
    process: each step holds the same sessions (or, in the item layout with its shared prefix, the same packed
    micro-batches), split over the two, and the summed gradients are the step's mean. Only the order of float
    additions differs (stated tolerance: 1e-5 absolute on every weight)."""
    from care.model.launch import run_finetune

    path, tok, examples = base
    p1 = _params(tmp_path, packing=packing, batch_size=12, grad_accum=2, max_steps=3)  # 2 sessions a step
    p2 = _params(tmp_path, packing=packing, batch_size=12, grad_accum=2, max_steps=3, num_processes=2)
    s1 = run_finetune(path, examples, p1, tmp_path / "one")
    s2 = run_finetune(path, examples, p2, tmp_path / "two")
    assert (s1["processes"], s2["processes"]) == (1, 2) and s1["steps"] == s2["steps"] == 3
    if packing == "session":
        assert s1["sessions_per_step"] == s2["sessions_per_step"] == 2
    else:
        assert s1["shared_prefix"] is s2["shared_prefix"] is True
    a, b = _adapter_tensors(tmp_path / "one"), _adapter_tensors(tmp_path / "two")
    assert a.keys() == b.keys() and a
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
    assert diff < 1e-5 and moved > 1e-3  # B starts at zero: training really moved it
    for key in ("train_tokens", "target_tokens"):  # counted over both processes
        assert s1[key] == s2[key]
    assert abs(s1["final_loss"] - s2["final_loss"]) < 1e-4 and abs(s1["first_loss"] - s2["first_loss"]) < 1e-4
