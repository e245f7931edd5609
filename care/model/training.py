"""Fine-tuning: LoRA (default) or full fine-tuning of a base model on (session, item) examples.

Two layouts (`train.packing`): `session` packs each session into one sequence that holds its transcript
once (care.model.packing; a step holds whole sessions, about `batch_size x grad_accum` items); `item` trains on
the examples themselves, in micro-batches of `batch_size` that, with `share_prefix`, reuse one encoding
of the transcript per micro-batch. Both give the same loss for the same examples.

The loss is the mean cross-entropy over target tokens only (`care.model.loss`, the score digit weighted by
`train.score_weight`): the prompt already carries IGNORE_INDEX in `Example.labels`, padding is masked by
position, and logits are computed only at the positions that predict a target token (the LM head over the
whole transcript would cost as much as the layers).

Runs under `accelerate` (bf16 mixed precision on CUDA, none on CPU). In several processes
(`train.num_processes`, launched by `care.model.launch`) a step holds the same micro-batches as in one
(rounded up to a multiple of the process count), each process runs its share and DDP sums the gradients;
the loss is divided by the whole step's weight, so the sum is the step's mean. On CPU the same seed and
data give bit-identical weights. Outputs are safetensors only.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

from care.errors import CareError
from care.params import Params
from care.model.loss import target_weight, weighted_ce, weighted_ce_rows
from care.model.packing import (PackedSession, pack_by_session, packed_loss, restore_attention, shared_prefix_length,
                                use_packed_attention)
from care.model.prompts import IGNORE_INDEX, Example

STATS_FILE = "train_stats.json"
FULL_MARKER = "care_full_model.json"
BUCKET_BATCHES = 16  # batches per length bucket: sort a shuffled chunk of this many batches by length


def train_packing(params: Params) -> str:
    """The training layout: `session` (one packed sequence per session, see care.model.packing) or `item`."""
    packing = params.train.packing
    if packing not in ("item", "session"):
        raise CareError(f"train.packing {packing!r} unknown (session, item)")
    return packing


def sessions_per_step(examples: list[Example], params: Params) -> int:
    """With session packing, whole sessions per optimizer step: as many items as `batch_size x grad_accum`
    gives in the item layout (at least one session)."""
    sessions = {e.session_id for e in examples}
    items_per_session = len(examples) / max(1, len(sessions))
    return max(1, round(params.train.batch_size * params.train.grad_accum / items_per_session))


def packed_plan(n_sessions: int, seed: int, epochs: int) -> list[int]:
    """Session indices in training order for `epochs` epochs (each a fresh shuffle), deterministic in `seed`."""
    plan: list[int] = []
    for epoch in range(epochs):
        order = list(range(n_sessions))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        plan += order
    return plan


# --------------------------------------------------------------------------------------------------------
# batching


def batch_plan(lengths: list[int], batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """Micro-batches (lists of example indices) for `epochs` epochs, deterministic in `seed`.

    Each epoch shuffles the examples, sorts chunks of BUCKET_BATCHES batches by length (less padding),
    cuts them into batches and shuffles the batch order.
    """
    plan: list[list[int]] = []
    n = len(lengths)
    for epoch in range(epochs):
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(n))
        rng.shuffle(order)
        chunk = batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, n, chunk):
            part = sorted(order[start:start + chunk], key=lambda i: (-lengths[i], i))
            batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
        rng.shuffle(batches)
        plan += batches
    return plan


def session_plan(examples: list[Example], batch_size: int, seed: int, epochs: int) -> list[list[int]]:
    """Micro-batches that never mix sessions (so the shared transcript prefix is encoded once per batch):
    each epoch shuffles the items of every session, cuts them into batches of at most `batch_size` and
    shuffles the batch order. Deterministic in `seed`."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.session_id, []).append(i)
    plan: list[list[int]] = []
    for epoch in range(epochs):
        rng = random.Random(seed * 1_000_003 + epoch)
        batches = []
        for members in groups.values():
            members = list(members)
            rng.shuffle(members)
            batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
        rng.shuffle(batches)
        plan += batches
    return plan


def collate(examples: list[Example], pad_id: int):
    """Right-pad a batch: input ids (pad id), attention mask, labels (IGNORE_INDEX on pads)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        if len(e.labels) != len(e.input_ids):
            raise CareError(f"session={e.session_id} item={e.item_id}: labels and input ids differ in length")
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def target_loss(model, batch, score_weight: float = 1.0) -> tuple["torch.Tensor", float]:  # noqa: F821
    """(sum of target-token cross-entropy, number of target tokens) for one batch; with `score_weight`
    the score digit (each row's first target token) counts that many times in both.

    Logits are computed only at the positions that predict a target token (`_batch_target_loss`).
    """
    labels = batch["labels"]
    next_labels = labels[:, 1:]
    if int((next_labels != IGNORE_INDEX).sum()) == 0:
        raise CareError("a training batch has no target tokens")
    return _batch_target_loss(model, next_labels, score_weight, input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"], use_cache=False)


def _batch_target_loss(model, next_labels, score_weight: float, **inputs):
    """The forward of a padded batch and its target loss. The LM head runs only on the rows' own target
    positions (a batch's union of positions is mostly other rows' prompts and padding, and with a large
    vocabulary the head is most of the step); a model whose logits are not its output embedding applied
    to the last hidden state gets the union of positions instead, with the same loss."""
    valid = next_labels != IGNORE_INDEX
    cache = inputs.get("past_key_values")
    cached = cache.get_seq_length() if cache is not None else 0
    out = model(**inputs, logits_to_keep=1, output_hidden_states=True)
    hidden = out.hidden_states[-1] if out.hidden_states else None
    head = getattr(model, "module", model).get_output_embeddings()
    if hidden is not None and head is not None and out.logits.shape[1] == 1:
        import torch

        with torch.no_grad():
            same = torch.allclose(head(hidden[:, -1:]).float(), out.logits.float(), rtol=1e-4, atol=1e-4)
        if same:
            return weighted_ce_rows(head(hidden[:, :-1][valid]), next_labels, score_weight)
    positions = valid.any(dim=0).nonzero(as_tuple=True)[0]
    if cache is not None:
        cache.crop(cached)  # the first forward appended this batch to the shared prefix's cache
    out = model(**inputs, logits_to_keep=positions)
    logits = out.logits
    if logits.shape[1] != positions.numel():  # a model without logits_to_keep support: all positions came back
        logits = logits[:, positions]
    return weighted_ce(logits, next_labels, positions, score_weight)


def shared_prefix_loss(model, examples: list[Example], pad_id: int, device,
                       score_weight: float = 1.0) -> tuple["torch.Tensor", float]:  # noqa: F821
    """`target_loss` for examples that share a transcript prefix, encoding the prefix once.

    The prefix runs once (batch 1, with gradients); its key/value cache is repeated over the batch and the
    per-item parts run on top of it. The loss equals `target_loss` on the full examples: every item still
    sees exactly its own prompt, and only its own target is scored.
    """
    import torch

    shared = shared_prefix_length(examples)
    if shared < 2:
        return target_loss(model, {k: v.to(device) for k, v in collate(examples, pad_id).items()}, score_weight)
    prefix = torch.tensor([examples[0].input_ids[:shared]], dtype=torch.long, device=device)
    rest = [Example(e.session_id, e.item_id, e.input_ids[shared:], e.labels[shared:]) for e in examples]
    batch = {k: v.to(device) for k, v in collate(rest, pad_id).items()}
    out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if cache is None:
        raise CareError("the model returned no key/value cache; set train.share_prefix=false")
    cache.batch_repeat_interleave(len(examples))
    labels = batch["labels"]
    # labels[:, 0] is never a target (shared_prefix_length stops before it), so the shift stays in the suffix
    next_labels = labels[:, 1:]
    mask = torch.cat([torch.ones((len(examples), shared), dtype=torch.long, device=device), batch["attention_mask"]], 1)
    return _batch_target_loss(model, next_labels, score_weight, input_ids=batch["input_ids"], attention_mask=mask,
                              past_key_values=cache, use_cache=True)


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


def finetune(base_dir: str | Path, examples: list[Example], params: Params, out_dir: str | Path, desc: str = "") -> dict:
    """Fine-tune `base_dir` on `examples`; save the LoRA adapter (or full model) and train_stats.json into
    `out_dir` (atomically). Returns the stats (counts and timings only, no text)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from care.model.presets import BASE_CARD, load_base
    from care.fsutil import atomic_dir

    train_packing(params)
    if not examples:
        raise CareError("no training examples")
    tp = params.train
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available())
    set_seed(tp.seed)
    model, tokenizer = load_base(base_dir, params, accelerator.device, training=True)
    if params.model.finetune == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        lp = params.lora
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout,
                            target_modules=list(lp.target_modules), bias="none")
        set_seed(tp.seed)
        model = get_peft_model(model, config)
        if getattr(model.base_model.model, "is_gradient_checkpointing", False):
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    # the plan: micro-batches for whole epochs, cut at the step budget
    procs, rank = accelerator.num_processes, accelerator.process_index
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    packing = train_packing(params)
    share = packing == "item" and tp.share_prefix and not checkpointing and procs == 1
    packed: list[PackedSession] = []
    if packing == "session":
        packed = pack_by_session(examples)
        per_step = sessions_per_step(examples, params)
        per_step = procs * math.ceil(per_step / procs)
        micro_per_epoch = len(packed)
    else:
        if share:
            sizes: dict[str, int] = {}
            for e in examples:
                sizes[e.session_id] = sizes.get(e.session_id, 0) + 1
            micro_per_epoch = sum(math.ceil(n / tp.batch_size) for n in sizes.values())
        else:
            micro_per_epoch = math.ceil(len(examples) / tp.batch_size)
        per_step = procs * math.ceil(tp.grad_accum / procs)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / per_step))
    total_steps = tp.max_steps if tp.max_steps else max(1, math.ceil(tp.epochs * steps_per_epoch))
    plan_epochs = math.ceil(total_steps / steps_per_epoch)
    if packing == "session":
        plan: list = [[i] for i in packed_plan(len(packed), tp.seed, plan_epochs)]
    elif share:
        plan = session_plan(examples, tp.batch_size, tp.seed, plan_epochs)
    else:
        plan = batch_plan([len(e.input_ids) for e in examples], tp.batch_size, tp.seed, plan_epochs)
    while len(plan) < total_steps * per_step:  # pad the plan by repeating (only when batches < processes)
        plan += plan[: total_steps * per_step - len(plan)]
    plan = plan[: total_steps * per_step]
    steps = [plan[s * per_step:(s + 1) * per_step][rank::procs] for s in range(total_steps)]

    attention = use_packed_attention(model) if packing == "session" else None
    optimizer = torch.optim.AdamW(trainable, lr=tp.lr, weight_decay=tp.weight_decay)
    scheduler = _scheduler(optimizer, tp.scheduler, total_steps, int(round(tp.warmup_ratio * total_steps)))
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id
    sw = float(tp.score_weight)

    by_session: dict[str, list[Example]] = {}
    for e in examples:
        by_session.setdefault(e.session_id, []).append(e)

    def step_examples(micro_batch: list[int]) -> list[Example]:
        if packing == "session":
            return by_session[packed[micro_batch[0]].session_id]
        return [examples[i] for i in micro_batch]

    losses: list[float] = []
    train_tokens = target_tokens = 0
    first_step_s, first_step_tokens = 0.0, 0  # the first step carries the warm-up (kernels, allocator)
    started = time.perf_counter()
    bar = tqdm(range(total_steps), desc=desc or "fine-tune", disable=not accelerator.is_local_main_process,
               leave=False, mininterval=1.0)
    for step in bar:
        micro = steps[step]
        groups = [step_examples(idx) for idx in micro]
        # every process normalises by the whole step's weight, so the summed gradients are the step's mean
        everything = [e for idx in plan[step * per_step:(step + 1) * per_step] for e in step_examples(idx)]
        step_targets = sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for g in groups for e in g)
        step_weight = target_weight(everything, sw) / procs
        step_loss = 0.0
        for k, (idx, group) in enumerate(zip(micro, groups)):
            sync = k == len(groups) - 1
            with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                if packing == "session":
                    loss_sum, _ = packed_loss(model, packed[idx[0]], accelerator.device, sw)
                    train_tokens += len(packed[idx[0]].input_ids)
                elif share:
                    loss_sum, _ = shared_prefix_loss(model, group, pad_id, accelerator.device, sw)
                    train_tokens += sum(len(e.input_ids) for e in group)
                else:
                    batch = {key: v.to(accelerator.device) for key, v in collate(group, pad_id).items()}
                    loss_sum, _ = target_loss(model, batch, sw)
                    train_tokens += sum(len(e.input_ids) for e in group)
                loss = loss_sum / step_weight
            accelerator.backward(loss)
            step_loss += float(loss.detach())
        target_tokens += step_targets
        if procs > 1:  # each process holds procs x its share over the step's weight: the mean of the sums is the step's
            step_loss = _summed(accelerator, step_loss) / procs
        if tp.max_grad_norm and tp.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, tp.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
        if step == 0:
            first_step_s, first_step_tokens = time.perf_counter() - started, train_tokens
    bar.close()
    wall = time.perf_counter() - started
    if procs > 1:  # counts over all processes
        train_tokens, target_tokens = int(_summed(accelerator, train_tokens)), int(_summed(accelerator, target_tokens))
        first_step_tokens = int(_summed(accelerator, first_step_tokens))
    later_s = wall - first_step_s

    tail = losses[-max(1, len(losses) // 10):]
    stats = {
        "finetune": params.model.finetune,
        "packing": packing,
        "shared_prefix": share,
        "sessions_per_step": per_step if packing == "session" else None,
        "examples": len(examples),
        "steps": total_steps,
        "epochs": round(total_steps * per_step / micro_per_epoch, 4),
        "batch_size": tp.batch_size,
        "grad_accum": tp.grad_accum,
        "processes": procs,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": checkpointing,
        "trainable_parameters": n_trainable,
        "final_loss": round(sum(tail) / len(tail), 5),
        "mean_loss": round(sum(losses) / len(losses), 5),
        "first_loss": round(losses[0], 5),
        "train_tokens": train_tokens,
        "target_tokens": target_tokens,
        "tokens_per_s": round(train_tokens / wall, 1) if wall > 0 else None,
        "first_step_s": round(first_step_s, 3),
        "tokens_per_s_after_first": (round((train_tokens - first_step_tokens) / later_s, 1)
                                     if total_steps > 1 and later_s > 0 else None),
        "wall_s": round(wall, 2),
        "seed": tp.seed,
        "score_weight": sw,
    }
    accelerator.wait_for_everyone()
    if attention is not None:
        restore_attention(model, attention)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        with atomic_dir(out_dir) as tmp:
            if params.model.finetune == "lora":
                unwrapped.save_pretrained(tmp, safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp, safe_serialization=True)
                (tmp / FULL_MARKER).write_text(json.dumps({"finetune": "full"}) + "\n", "utf-8")
                base_card = Path(base_dir) / BASE_CARD
                if base_card.is_file():  # a fully fine-tuned tiny model is still tiny (float32)
                    (tmp / BASE_CARD).write_text(base_card.read_text("utf-8"), "utf-8")
            tokenizer.save_pretrained(tmp)
            (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", "utf-8")
    accelerator.wait_for_everyone()
    return stats


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
