"""Gradient checkpointing and sessions per forward pass, decided by memory.

Checkpointing trades a third more compute (every layer's forward runs again in the backward pass) for memory, so
it is on only when the step would not fit otherwise. What a step holds is measured, not guessed: two probe
forwards (no backward) over the largest training unit cut to two prefix lengths count the bytes autograd saves for
the backward (`saved_bytes`: every saved tensor's storage once, parameters excluded), in total and per decoder
layer; both grow linearly with the prefix, so the two probes give the full unit's bytes. With checkpointing a
layer keeps only its input, and one layer's activations are rebuilt at a time.

The decision: the resident bytes (weights, trainable state) plus a step's saved bytes plus the backward's
transient (two layers' activations and a tenth for the allocator) must stay under `train.memory_cap_gib` (default:
the device's memory). Without checkpointing as many sessions as fit share a forward pass (at most a step's);
failing one, checkpointing goes on. The estimate and the decision go into the training stats next to the measured
peak.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from care.errors import CareError

GIB = 1 << 30
ALLOCATOR_MARGIN = 0.10  # fragmentation and workspace on top of the counted bytes


@dataclass
class MemoryPlan:
    """The decision and what it rests on (bytes; `*_gib` in the stats)."""

    checkpointing: bool
    sessions_per_forward: int
    reason: str
    cap: int = 0
    resident: int = 0
    unit_saved: int = 0  # one unit's (session's, or micro-batch's) saved bytes without checkpointing
    unit_saved_checkpointed: int = 0
    estimate: int = 0  # the peak expected under the decision

    def as_dict(self) -> dict:
        sizes = ("cap", "resident", "unit_saved", "unit_saved_checkpointed", "estimate")
        out = {k: v for k, v in asdict(self).items() if k not in sizes}
        out.update({f"{key}_gib": round(getattr(self, key) / GIB, 4) for key in sizes})
        return out


def device_memory(device) -> int:
    """Total memory of `device`: the GPU's, or the host's for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes(model, trainable: list, master: bool) -> int:
    """Weights and buffers, plus per trainable weight its gradient, two AdamW moments and, with a master copy,
    the float32 copy and its gradient."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    states = sum(p.numel() * (p.element_size() + 8 + (8 if master else 0)) for p in trainable)
    return weights + states


def saved_bytes(model, run) -> tuple[int, list[int]]:
    """(bytes autograd saves for the backward of `run()`, per decoder layer), each storage counted once and
    parameters (and views of them) left out. `run` computes a loss; nothing is backpropagated."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    layers = _layers(model)
    marks: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda *_: marks.append(sum(seen.values()))) for layer in layers]
    hooks.append(layers[-1].register_forward_hook(lambda *_: marks.append(sum(seen.values()))))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = run()
        del loss
    finally:
        for h in hooks:
            h.remove()
    per_layer = [b - a for a, b in zip(marks, marks[1:])]
    return sum(seen.values()), per_layer


def extrapolate(small: tuple[int, int], large: tuple[int, int], prefix: int) -> int:
    """Bytes at `prefix` from two probes (prefix, bytes): linear in the prefix length."""
    (p0, b0), (p1, b1) = small, large
    if p1 <= p0:
        raise CareError("memory probes need two different prefix lengths")
    return max(b1, round(b1 + (b1 - b0) / (p1 - p0) * (prefix - p1)))


def checkpointed(total: int, per_layer: list[int], layer_inputs: int) -> int:
    """Saved bytes with every decoder layer checkpointed: its input kept, one layer rebuilt at a time."""
    outside = total - sum(per_layer)
    return outside + layer_inputs + max(per_layer, default=0)


def decide(*, cap: int, resident: int, unit: int, unit_checkpointed: int, layer_peak: int, most: int,
           forced: bool | None) -> MemoryPlan:
    """Checkpointing and units per forward under `cap` (see the module docstring); `forced` is the params' own
    `model.gradient_checkpointing` when set."""

    def peak(n: int, per_unit: int) -> int:
        return round((resident + n * per_unit + 2 * layer_peak) * (1 + ALLOCATOR_MARGIN))

    def fitting(per_unit: int) -> int:
        room = cap / (1 + ALLOCATOR_MARGIN) - resident - 2 * layer_peak
        return max(0, min(most, math.floor(room / per_unit))) if per_unit > 0 else most

    common = dict(cap=cap, resident=resident, unit_saved=unit, unit_saved_checkpointed=unit_checkpointed)
    if forced is None:
        n = fitting(unit)
        if n >= 1:
            return MemoryPlan(False, n, f"auto: {n} unit(s) a forward fit without checkpointing "
                              f"({peak(n, unit) / GIB:.1f} of {cap / GIB:.1f} GiB)", estimate=peak(n, unit), **common)
        n = max(1, fitting(unit_checkpointed))
        return MemoryPlan(True, n, f"auto: one unit without checkpointing needs {peak(1, unit) / GIB:.1f} GiB, over "
                          f"{cap / GIB:.1f}", estimate=peak(n, unit_checkpointed), **common)
    per_unit = unit_checkpointed if forced else unit
    n = max(1, fitting(per_unit))
    return MemoryPlan(forced, n, f"model.gradient_checkpointing={str(forced).lower()}",
                      estimate=peak(n, per_unit), **common)


def plan_step_memory(model, *, probe, prefix: int, tokens: int, copies: int, cap: int, resident: int, most: int,
                     forced: bool | None, hidden_size: int, act_bytes: int) -> MemoryPlan:
    """Measure the largest training sequence (`prefix` shared tokens, `tokens` in all) by two probes, then
    `decide`. `probe(n)` computes the loss of that sequence with its prefix cut to `n` tokens; `copies` such
    sequences make one unit (the item layout's micro-batch of `batch_size` examples; a packed session is one)."""
    layers = len(_layers(model))
    large = max(2, min(prefix - 1, 128))
    small = max(1, large // 2)
    if small == large:
        raise CareError(f"a training sequence's prefix of {prefix} tokens is too short to measure memory on")
    (t0, l0), (t1, l1) = (saved_bytes(model, lambda n=n: probe(n)) for n in (small, large))
    total = copies * extrapolate((small, t0), (large, t1), prefix)
    layer_peak = copies * extrapolate((small, max(l0)), (large, max(l1)), prefix)
    per_layer = [min(layer_peak, round(b * total / max(1, t1))) for b in l1]
    with_checkpoints = checkpointed(total, per_layer, copies * layers * tokens * hidden_size * act_bytes)
    return decide(cap=cap, resident=resident, unit=total, unit_checkpointed=with_checkpoints, layer_peak=layer_peak,
                  most=most, forced=forced)


def _layers(model):
    """The decoder's layer list (the ModuleList as long as the config's layer count)."""
    import torch

    config = model.config if hasattr(model, "config") else None
    n = getattr(getattr(config, "get_text_config", lambda: config)(), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n:
            return list(module)
    raise CareError("cannot find the decoder layers to measure memory")
