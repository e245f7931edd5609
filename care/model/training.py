"""Fine-tuning: LoRA (default for the real presets) or full fine-tuning of a base model on (session, item) examples.

Two layouts (`train.packing`): `session` packs each session into one sequence that holds its transcript
once (care.model.packing; a step holds whole sessions, `train.sessions_per_step`, run `sessions_per_forward` to a
forward pass); `item` trains on the examples themselves (care.model.item_layout), in micro-batches of `batch_size`
that, with `share_prefix`, hold one session's items and run packed like a session (its transcript once,
`sessions_per_forward` micro-batches to a forward pass). Both give the same loss for the same examples. The plan of
steps is care.model.plan.

The loss is the mean cross-entropy over target tokens only (`care.model.loss`, the score digit weighted by
`train.score_weight`): the prompt already carries IGNORE_INDEX in `Example.labels`, padding is masked by
position, and logits are computed only at the positions that predict a target token (the LM head over the
whole transcript would cost as much as the layers).

How a step runs is decided when training starts, and recorded in the stats with the reason: the trainable weights'
precision (care.model.precision: bf16 adapters with a float32 master copy, or float32 under bf16 autocast), fused
kernels (care.model.fused), and gradient checkpointing and sessions per forward by memory (care.model.memory). None
of these changes the loss. Inputs are built on the host and sent ahead, and the loss is read back once a step, so
the host never waits for the device inside a step.

In several processes (`train.num_processes`, launched by `care.model.launch`) a step holds the same micro-batches as
in one, each process runs its share and DDP sums the gradients; the loss is divided by the whole step's weight, so
the sum is the step's mean. On CPU the same seed and data give bit-identical weights. Outputs are safetensors only.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from care.errors import CareError
from care.params import FitParams, Params
from care.model.item_layout import collate, target_loss
from care.model.loss import target_weight
from care.model.packing import by_session, concat_packed, pack_by_session, pack_session, packed_inputs, \
    packed_loss, restore_attention, use_packed_attention
from care.model.plan import step_plan
from care.model.prompts import IGNORE_INDEX, Example

STATS_FILE = "train_stats.json"
FULL_MARKER = "care_full_model.json"


def finetune(base_dir: str | Path, examples: list[Example], params: Params | FitParams, out_dir: str | Path,
             desc: str = "", step_callback: Callable[[int], None] | None = None) -> dict:
    """Fine-tune `base_dir` on `examples`; save the LoRA adapter (or full model) and train_stats.json into
    `out_dir` (atomically). Returns the stats (counts, timings and decisions; no text). `step_callback(step)`
    runs after every optimizer step (benchmarks profile with it)."""
    if not examples:
        raise CareError("no training examples")
    run = _set_up(base_dir, examples, params)
    counts = _train(run, examples, params, desc, step_callback)
    stats = _stats(run, examples, params, counts)
    _save(run, base_dir, params, out_dir, stats)
    return stats


@dataclass
class _Run:
    """What `_set_up` decided and built for one fine-tune."""

    accelerator: Any
    model: Any
    tokenizer: Any
    precision: Any
    fused: Any
    memory: Any
    plan: Any
    master: Any
    optimizer: Any
    scheduler: Any
    trainable: list
    n_trainable: int
    model_type: str
    packed: list
    attention: Any
    share: bool
    loss_of: Callable
    autocast: Callable  # bf16 autocast when the precision asks for it, else a no-op context

    @property
    def procs(self) -> int:
        return self.accelerator.num_processes


def _set_up(base_dir: str | Path, examples: list[Example], params: Params | FitParams) -> _Run:
    """Load the base, add LoRA, choose precision, fused kernels, checkpointing and sessions per forward, plan the
    steps and build the optimizer (the order of these steps fixes the random draws: keep it)."""
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed

    from care.model.fused import apply_liger, choose_fused
    from care.model.presets import base_dtype, is_tiny, load_base
    from care.model.precision import MasterWeights, choose_precision

    layout, tp = params.train.packing, params.train
    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda)
    precision = choose_precision(params, base_dtype(base_dir, params, state.device), state.num_processes,
                                 state.device.type)
    # autocast is ours (`precision.autocast`), not accelerate's: its state is one per process, and fine-tunes of
    # different precisions share a process (folds and the final fit of a run, benchmark variants)
    accelerator = Accelerator(mixed_precision="no", cpu=not cuda)
    procs, rank = accelerator.num_processes, accelerator.process_index
    set_seed(tp.seed)
    model, tokenizer = load_base(base_dir, params, accelerator.device, training=True)
    if params.model.finetune == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lp = params.lora
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout,
                            target_modules=list(lp.target_modules), bias="none")
        set_seed(tp.seed)
        model = get_peft_model(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    master = MasterWeights(trainable) if precision.master else None
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    fused = choose_fused(params, model_type, accelerator.device.type, procs)
    if fused.kind == "liger":
        apply_liger(model)

    # the item layout's shared prefix: a micro-batch is one session's items, run packed like a session
    share = layout == "item" and tp.share_prefix
    packed = pack_by_session(examples) if layout == "session" else []
    units = packed or (_largest_micro_batches(examples, tp.batch_size) if share else [])
    attention = use_packed_attention(model) if units else None
    sw, liger = float(tp.score_weight), fused.kind == "liger"

    def autocast():
        return torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=precision.autocast)

    memory = _memory_plan(model, params, examples, units, _loss_function(model, accelerator.device, sw, liger),
                          trainable, master is not None, procs, tiny=is_tiny(base_dir), device=accelerator.device,
                          autocast=autocast, share=share)
    if memory.checkpointing:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner.config.use_cache = False
        if params.model.finetune == "lora":
            model.enable_input_require_grads()
    plan = step_plan(examples, params, processes=procs, rank=rank, shared_prefix=share, n_sessions=len(packed),
                     sessions_per_forward=memory.sessions_per_forward)

    optimizer = torch.optim.AdamW(master.master if master else trainable, lr=tp.lr, weight_decay=tp.weight_decay,
                                  **({"fused": True} if cuda else {}))
    scheduler = _scheduler(optimizer, tp.scheduler, plan.total_steps, int(round(tp.warmup_ratio * plan.total_steps)))
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_of = _loss_function(model, accelerator.device, sw, liger)  # through DDP's forward
    return _Run(accelerator, model, tokenizer, precision, fused, memory, plan, master, optimizer, scheduler, trainable,
                sum(p.numel() for p in trainable), model_type, packed, attention, share, loss_of, autocast)


@dataclass
class _Counts:
    """What the loop measured: the step losses and the counts and times the stats report."""

    losses: list[float]
    train_tokens: int = 0
    target_tokens: int = 0
    items: int = 0
    first_step_s: float = 0.0  # the first step carries the warm-up (kernels, allocator)
    first_step_tokens: int = 0
    first_step_items: int = 0
    wall: float = 0.0


def _train(run: _Run, examples: list[Example], params: Params | FitParams, desc: str,
           step_callback: Callable[[int], None] | None) -> _Counts:
    """The optimizer steps of `run.plan`; one host sync a step (the loss), inputs built a step ahead."""
    import torch
    from tqdm.auto import tqdm

    from care.model.fused import liger_rope

    accelerator, model, plan, procs = run.accelerator, run.model, run.plan, run.procs
    layout, tp = params.train.packing, params.train
    sw, pad_id = float(tp.score_weight), run.tokenizer.pad_token_id
    sessions = by_session(examples)

    def examples_of(micro: list[int]) -> list[Example]:
        if layout == "session":
            return [e for i in micro for e in sessions[run.packed[i].session_id]]
        return [examples[i] for i in micro]

    def inputs_of(step: int) -> list:
        """The step's forward inputs, built on the host and sent ahead (the packed layouts)."""
        if layout == "session":
            return [packed_inputs(model, concat_packed([run.packed[i] for i in micro]), accelerator.device, sw)
                    for micro in plan.steps[step]]
        if run.share:  # each micro-batch's items behind their transcript, as one packed sequence
            return [packed_inputs(model, concat_packed(pack_by_session(examples_of(micro))), accelerator.device, sw)
                    for micro in plan.steps[step]]
        return [None] * len(plan.steps[step])

    c = _Counts(losses=[])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    started = time.perf_counter()
    bar = tqdm(range(plan.total_steps), desc=desc or "fine-tune", disable=not accelerator.is_local_main_process,
               leave=False, mininterval=1.0)
    with liger_rope(run.model_type) if run.fused.kind == "liger" else nullcontext():
        upcoming = inputs_of(0)
        for step in bar:
            micro, inputs = plan.steps[step], upcoming
            # every process normalises by the whole step's weight, so the summed gradients are the step's mean
            step_weight = target_weight([e for m in plan.whole[step] for e in examples_of(m)], sw) / procs
            step_loss = None
            for k, (idx, prepared) in enumerate(zip(micro, inputs)):
                sync = k == len(micro) - 1
                group = examples_of(idx)
                with (nullcontext() if sync else accelerator.no_sync(model)), run.autocast():
                    if prepared is not None:  # packed: the session layout, or the item layout's shared prefix
                        loss_sum = run.loss_of(prepared)
                        c.train_tokens += len(prepared.packed.input_ids)
                    else:
                        batch = {key: v.to(accelerator.device) for key, v in collate(group, pad_id).items()}
                        loss_sum, _ = target_loss(model, batch, sw)
                        c.train_tokens += sum(len(e.input_ids) for e in group)
                    loss = loss_sum / step_weight
                accelerator.backward(loss)
                if run.master is not None:
                    run.master.accumulate()
                part = loss.detach().double()
                step_loss = part if step_loss is None else step_loss + part
                c.target_tokens += sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in group)
                c.items += len(group)
            _optimizer_step(accelerator, run.optimizer, run.scheduler, run.master, run.trainable, tp.max_grad_norm)
            if step + 1 < plan.total_steps:
                upcoming = inputs_of(step + 1)  # built while the device finishes this step
            step_loss = float(step_loss)
            if procs > 1:  # each process holds procs x its share over the step's weight: the mean of the sums is the step's
                step_loss = _summed(accelerator, step_loss) / procs
            c.losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
            if step == 0:
                c.first_step_s, c.first_step_tokens, c.first_step_items = (time.perf_counter() - started,
                                                                           c.train_tokens, c.items)
            if step_callback is not None:
                step_callback(step)
    bar.close()
    c.wall = time.perf_counter() - started
    if procs > 1:  # counts over all processes
        for name in ("train_tokens", "target_tokens", "first_step_tokens", "items", "first_step_items"):
            setattr(c, name, int(_summed(accelerator, getattr(c, name))))
    return c


def _stats(run: _Run, examples: list[Example], params: Params | FitParams, c: _Counts) -> dict:
    """train_stats.json: the recipe, every decision with its reason, the losses, counts and speeds."""
    import torch

    tp, layout, plan = params.train, params.train.packing, run.plan
    later_s = c.wall - c.first_step_s
    timed = plan.total_steps > 1 and later_s > 0
    tail = c.losses[-max(1, len(c.losses) // 10):]
    cuda = torch.cuda.is_available()
    return {
        "finetune": params.model.finetune,
        "packing": layout,
        "shared_prefix": run.share,
        "sessions_per_step": plan.per_step if layout == "session" else None,
        "sessions_per_forward": run.memory.sessions_per_forward if layout == "session" else None,
        "micro_batches_per_forward": run.memory.sessions_per_forward if run.share else None,
        "examples": len(examples),
        "steps": plan.total_steps,
        "epochs": plan.epochs,
        "batch_size": tp.batch_size,
        "grad_accum": tp.grad_accum,
        "processes": run.procs,
        "mixed_precision": "bf16" if run.precision.autocast else "no",
        "precision": run.precision.as_dict(),
        "fused_kernels": run.fused.as_dict(),
        "gradient_checkpointing": run.memory.checkpointing,
        "memory": run.memory.as_dict(),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated(run.accelerator.device) / 2**30, 2) if cuda else None,
        "recipe": dict(params.resolved),
        "trainable_parameters": run.n_trainable,
        "final_loss": round(sum(tail) / len(tail), 5),
        "mean_loss": round(sum(c.losses) / len(c.losses), 5),
        "first_loss": round(c.losses[0], 5),
        "train_tokens": c.train_tokens,
        "target_tokens": c.target_tokens,
        "tokens_per_s": round(c.train_tokens / c.wall, 1) if c.wall > 0 else None,
        "first_step_s": round(c.first_step_s, 3),
        "tokens_per_s_after_first": round((c.train_tokens - c.first_step_tokens) / later_s, 1) if timed else None,
        "items": c.items,
        "items_per_s_after_first": round((c.items - c.first_step_items) / later_s, 3) if timed else None,
        "wall_s": round(c.wall, 2),
        "seed": tp.seed,
        "score_weight": float(tp.score_weight),
    }


def _save(run: _Run, base_dir: str | Path, params: Params | FitParams, out_dir: str | Path, stats: dict) -> None:
    """The adapter (or full model), the tokenizer and the stats into `out_dir`, atomically, from the main process."""
    from care.fsutil import atomic_dir
    from care.model.presets import BASE_CARD

    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if run.attention is not None:
        restore_attention(run.model, run.attention)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        with atomic_dir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            if params.model.finetune != "lora":
                (tmp / FULL_MARKER).write_text(json.dumps({"finetune": "full"}) + "\n", "utf-8")
                base_card = Path(base_dir) / BASE_CARD
                if base_card.is_file():  # a fully fine-tuned tiny model is still tiny (float32)
                    (tmp / BASE_CARD).write_text(base_card.read_text("utf-8"), "utf-8")
            run.tokenizer.save_pretrained(tmp)
            (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", "utf-8")
    accelerator.wait_for_everyone()


def _optimizer_step(accelerator, optimizer, scheduler, master, trainable: list, max_grad_norm: float) -> None:
    """Clip, step and zero; with a master copy the float32 copy is clipped and stepped, then rounded back."""
    import torch

    if master is not None:
        if max_grad_norm and max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(master.master, max_grad_norm)
        optimizer.step()
        scheduler.step()
        master.write_back()
        return
    if max_grad_norm and max_grad_norm > 0:
        accelerator.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _loss_function(model, device, score_weight: float, fused: bool):
    """The loss of one prepared packed sequence: the model's logits at the target positions, or (fused) liger's
    head-and-cross-entropy on the decoder's hidden states there."""
    if not fused:
        return lambda prepared: packed_loss(model, prepared, device, score_weight)[0]
    from care.model.fused import decoder_of, fused_head_loss, head_of

    decoder, head = decoder_of(model), head_of(model)

    def loss(prepared):
        out = decoder(input_ids=prepared.ids, position_ids=prepared.positions, use_cache=False, **prepared.attention)
        return fused_head_loss(out.last_hidden_state[0], head.weight, prepared.next_labels, prepared.keep,
                               score_weight)

    return loss


def _largest_micro_batches(examples: list[Example], batch_size: int) -> list:
    """Per session, its `batch_size` longest items packed: the largest micro-batch the shared-prefix item layout can
    draw from it (what its memory is planned on)."""
    return [pack_session(sorted(g, key=lambda e: -len(e.input_ids))[:batch_size])
            for g in by_session(examples).values()]


def _memory_plan(model, params, examples: list[Example], packed: list, loss_of, trainable: list, master: bool,
                 procs: int, *, tiny: bool, device, autocast, share: bool = False):
    """Checkpointing and packed units per forward (care.model.memory; sessions, or with `share` the item layout's
    micro-batches): the params' choice for the tiny preset, measured for the others."""
    import math

    from care.model.memory import MemoryPlan, device_memory, plan_step_memory, resident_bytes
    from care.model.packing import cut_prefix

    tp = params.train
    forced_k = tp.sessions_per_forward if isinstance(tp.sessions_per_forward, int) else None
    forced_gc = params.model.gradient_checkpointing
    most = 1
    if share:
        most = forced_k or math.ceil(tp.grad_accum / procs)
    elif packed:
        from care.model.plan import sessions_per_step

        most = forced_k or math.ceil(sessions_per_step(examples, params) / procs)
    if tiny:
        return MemoryPlan(bool(forced_gc), forced_k or 1,
                          "tiny preset: checkpointing as model.gradient_checkpointing says (off by default); "
                          + ("train.sessions_per_forward" if forced_k else
                             "one micro-batch a forward" if share else "one session a forward"))
    cap = int(tp.memory_cap_gib * 2**30) if tp.memory_cap_gib else device_memory(device)
    config = model.config
    hidden = getattr(config, "get_text_config", lambda: config)().hidden_size
    act_bytes = 2 if any(p.dtype.is_floating_point and p.element_size() == 2 for p in model.parameters()) else 4
    if packed:
        unit = max(packed, key=lambda p: len(p.input_ids))
        prefix, tokens, copies = unit.blocks.count(0), len(unit.input_ids), 1

        def probe(n):
            with autocast():
                return loss_of(packed_inputs(model, cut_prefix(unit, n), device, float(tp.score_weight)))
    else:
        unit = max(examples, key=lambda e: len(e.input_ids))
        prefix = next(i for i, x in enumerate(unit.labels) if x != IGNORE_INDEX) - 1
        tokens, copies = len(unit.input_ids), tp.batch_size

        def probe(n):
            cut = Example(unit.session_id, unit.item_id, unit.input_ids[:n] + unit.input_ids[prefix:],
                          unit.labels[:n] + unit.labels[prefix:])
            with autocast():
                batch = {k: v.to(device) for k, v in collate([cut], 0).items()}
                return target_loss(model, batch, float(tp.score_weight))[0]
    resident = resident_bytes(model, trainable, master)
    plan = plan_step_memory(model, probe=probe, prefix=prefix, tokens=tokens, copies=copies, cap=cap,
                            resident=resident, most=most, forced=forced_gc, hidden_size=hidden, act_bytes=act_bytes)
    if forced_k:
        plan.sessions_per_forward = forced_k
        plan.reason += f"; train.sessions_per_forward={forced_k}"
    return plan


def _scheduler(optimizer, kind: str, total: int, warmup: int):
    import torch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------
# fine-tuning


def _summed(accelerator, value: float) -> float:
    import torch

    return float(accelerator.reduce(torch.tensor(float(value), dtype=torch.float64, device=accelerator.device),
                                    reduction="sum"))


def load_finetuned(base_dir: str | Path, adapter_or_model_dir: str | Path, device="cpu"):
    """(model, tokenizer) in eval mode: the base plus a LoRA adapter, or a fully fine-tuned model."""
    from care.model.presets import load_base

    path = Path(adapter_or_model_dir)
    if (path / "adapter_config.json").is_file():
        if not (path / "adapter_model.safetensors").is_file():
            raise CareError(f"{path}: no adapter_model.safetensors (only safetensors adapters are loaded)")
        from peft import PeftModel

        model, tokenizer = load_base(base_dir, None, device)
        model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        model.eval()
        return model, tokenizer
    if (path / "config.json").is_file():
        return load_base(path, None, device)
    raise CareError(f"{path}: neither a LoRA adapter nor a model directory")
