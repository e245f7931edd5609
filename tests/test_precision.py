"""The trainable weights' precision on a bf16 base (care.model.precision): bf16 adapters with a float32 master copy
and no autocast compute the loss and the adapter gradients of the float32-adapters-under-autocast recipe, to
bf16 rounding (stated tolerance: 2e-2 relative to the largest gradient; the loss to 1e-3 relative), and a
fine-tune in either precision ends at the same adapter to that tolerance."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from care.errors import CareError  # noqa: E402
from care.model.packing import pack_session, packed_loss, use_packed_attention  # noqa: E402
from care.model.precision import MasterWeights, choose_precision  # noqa: E402
from care.params import Params  # noqa: E402
from test_training import _params, base  # noqa: E402,F401  (the module-scoped tiny base fixture)

GRAD_REL = 2e-2
LOSS_REL = 1e-3
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora(path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16, attn_implementation="sdpa")
    use_packed_attention(model)
    torch.manual_seed(0)  # random B (not the zero init), or every A gradient would be zero
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PROJECTIONS,
                        init_lora_weights=False)
    model = get_peft_model(model, config)
    model.train()
    return model


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def test_bf16_adapters_with_a_master_copy_match_float32_adapters_under_autocast(base):  # noqa: F811
    path, tok, examples = base
    group = [e for e in examples if e.session_id == examples[0].session_id]
    packed = pack_session(group)

    reference = _lora(path)
    assert all(p.dtype == torch.float32 for _, p in _trainable(reference))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, weight = packed_loss(reference, packed, "cpu", 30.0)
    (loss_sum / weight).backward()
    want = {n: p.grad.float() for n, p in _trainable(reference)}

    fast = _lora(path)
    names = [n for n, _ in _trainable(fast)]
    master = MasterWeights([p for _, p in _trainable(fast)])
    assert all(p.dtype == torch.bfloat16 for _, p in _trainable(fast))
    loss_fast, weight_fast = packed_loss(fast, packed, "cpu", 30.0)
    (loss_fast / weight_fast).backward()
    master.accumulate()
    got = dict(zip(names, (m.grad for m in master.master)))

    assert weight == weight_fast
    assert abs(float(loss_sum.detach()) - float(loss_fast.detach())) <= LOSS_REL * abs(float(loss_sum.detach()))
    scale = max(float(g.abs().max()) for g in want.values())
    assert scale > 0
    worst = max(float((want[n] - got[n]).abs().max()) for n in want)
    assert worst <= GRAD_REL * scale, f"gradient differs by {worst:.3g} (scale {scale:.3g})"


def test_master_weights_step_in_float32_and_round_back():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    master = MasterWeights([w])
    assert w.dtype == torch.bfloat16 and master.master[0].dtype == torch.float32
    for _ in range(2):  # two backward passes accumulate in float32
        (w.float() * torch.tensor([1.0, 0.5, 0.25])).sum().backward()
        master.accumulate()
        assert w.grad is None
    assert torch.equal(master.master[0].grad, torch.tensor([2.0, 1.0, 0.5]))
    opt = torch.optim.SGD(master.master, lr=1e-3)
    opt.step()
    master.write_back()
    assert torch.allclose(master.master[0], torch.tensor([0.998, 1.999, 2.9995]))
    assert torch.equal(w.data, master.master[0].to(torch.bfloat16)) and float(master.master[0].grad.abs().sum()) == 0
    with pytest.raises(CareError, match="no gradient"):
        master.accumulate()


def test_the_precision_decision():
    p = Params(model={"preset": "llama-3.1-8b-instruct"})
    assert p.model.finetune == "lora"
    fast = choose_precision(p, "bfloat16", 1, "cuda")
    assert (fast.adapter_dtype, fast.autocast, fast.master) == ("bfloat16", False, True)
    ddp = choose_precision(p, "bfloat16", 2, "cuda")
    assert (ddp.adapter_dtype, ddp.autocast, ddp.master) == ("float32", True, False)
    assert "2 processes" in ddp.reason
    cpu = choose_precision(p, "float32", 1, "cpu")  # a real preset on CPU loads in float32
    assert (cpu.adapter_dtype, cpu.autocast) == ("float32", False)
    p.train.adapter_dtype = "float32"
    assert choose_precision(p, "bfloat16", 1, "cuda").autocast
    p.train.adapter_dtype = "bfloat16"
    with pytest.raises(CareError, match="one process"):
        choose_precision(p, "bfloat16", 2, "cuda")
    full = Params(model={"preset": "llama-3.1-8b-instruct", "finetune": "full"})
    assert choose_precision(full, "bfloat16", 1, "cuda").master is False


def test_finetune_in_either_precision_ends_at_the_same_adapter(base, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from care.model.training import finetune

    path, tok, examples = base
    adapters = {}
    for dtype in ("float32", "bfloat16"):
        p = _params(tmp_path, packing="session", batch_size=12, grad_accum=2, max_steps=3, lr=2e-2,
                    adapter_dtype=dtype)
        p.model.dtype = "bfloat16"
        stats = finetune(path, examples, p, tmp_path / dtype)
        assert stats["precision"]["adapter_dtype"] == dtype
        assert stats["precision"]["autocast"] is (dtype == "float32")
        adapters[dtype] = load_file(str(tmp_path / dtype / "adapter_model.safetensors"))
    a, b = adapters["float32"], adapters["bfloat16"]
    assert a.keys() == b.keys()
    scale = max(float(t.abs().max()) for t in a.values())
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= GRAD_REL * scale, f"adapters differ by {worst:.3g} (scale {scale:.3g})"
