"""The step plan of a fine-tune: what each optimizer step holds, for whole epochs cut at the step budget, and
this process's share of it. Deterministic in the seed.

Item layout: a step is `grad_accum` micro-batches of `batch_size` examples (with `share_prefix`, micro-batches
that never mix sessions, each run packed, `sessions_per_forward` of them to a forward pass). Session layout: a step
is whole packed sessions (`train.sessions_per_step`, by default about `batch_size x grad_accum` items' worth), run
`sessions_per_forward` to a forward pass. In several processes a step holds the same micro-batches as in one
(rounded up to a multiple of the process count), split over them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from care.model.prompts import Example
from care.params import FitParams, Params

BUCKET_BATCHES = 16  # batches per length bucket: sort a shuffled chunk of this many batches by length


def sessions_per_step(examples: list[Example], params: Params | FitParams) -> int:
    """With session packing, whole sessions per optimizer step: `train.sessions_per_step`, or as many items as
    `batch_size x grad_accum` gives in the item layout (at least one session)."""
    if isinstance(params.train.sessions_per_step, int):
        return params.train.sessions_per_step
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


@dataclass
class StepPlan:
    """What every optimizer step holds. `steps[s]` is this process's forward passes of step s (item layout: one
    micro-batch of example indices each; session layout: the packed sessions' indices run together), and
    `whole[s]` every process's micro-batches of step s (the step's loss normaliser counts all of them)."""

    layout: str
    shared_prefix: bool
    per_step: int  # micro-batches (item) or sessions (session) per step, over all processes
    micro_per_epoch: int
    total_steps: int
    steps: list[list[list[int]]]
    whole: list[list[list[int]]]

    @property
    def epochs(self) -> float:
        return round(self.total_steps * self.per_step / self.micro_per_epoch, 4)


def step_plan(examples: list[Example], params: Params | FitParams, *, processes: int = 1, rank: int = 0,
              shared_prefix: bool = False, n_sessions: int = 0, sessions_per_forward: int = 1) -> StepPlan:
    """The plan of a fine-tune over `examples` (`n_sessions` packed sessions in the session layout)."""
    tp = params.train
    layout = params.train.packing
    if layout == "session":
        per_step = processes * math.ceil(sessions_per_step(examples, params) / processes)
        micro_per_epoch = n_sessions
    else:
        if shared_prefix:
            sizes: dict[str, int] = {}
            for e in examples:
                sizes[e.session_id] = sizes.get(e.session_id, 0) + 1
            micro_per_epoch = sum(math.ceil(n / tp.batch_size) for n in sizes.values())
        else:
            micro_per_epoch = math.ceil(len(examples) / tp.batch_size)
        per_step = processes * math.ceil(tp.grad_accum / processes)
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / per_step))
    total_steps = tp.max_steps if tp.max_steps else max(1, math.ceil(tp.epochs * steps_per_epoch))
    plan_epochs = math.ceil(total_steps / steps_per_epoch)
    if layout == "session":
        plan: list[list[int]] = [[i] for i in packed_plan(n_sessions, tp.seed, plan_epochs)]
    elif shared_prefix:
        plan = session_plan(examples, tp.batch_size, tp.seed, plan_epochs)
    else:
        plan = batch_plan([len(e.input_ids) for e in examples], tp.batch_size, tp.seed, plan_epochs)
    while len(plan) < total_steps * per_step:  # pad the plan by repeating (only when batches < processes)
        plan += plan[: total_steps * per_step - len(plan)]
    plan = plan[: total_steps * per_step]
    whole = [plan[s * per_step:(s + 1) * per_step] for s in range(total_steps)]
    steps = [step[rank::processes] for step in whole]
    if (layout == "session" or shared_prefix) and sessions_per_forward > 1:
        steps = [_forwards(step, sessions_per_forward) for step in steps]
    return StepPlan(layout, shared_prefix, per_step, micro_per_epoch, total_steps, steps, whole)


def _forwards(micro: list[list[int]], most: int) -> list[list[int]]:
    """A step's micro-batches (packed sessions, or one session's items) grouped into as few forward passes of at
    most `most` as possible, evenly sized; each forward is the indices of its micro-batches, in order."""
    n = math.ceil(len(micro) / most)
    size = math.ceil(len(micro) / n)
    return [[i for m in micro[k:k + size] for i in m] for k in range(0, len(micro), size)]
