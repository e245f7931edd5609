"""Session packing: one training sequence per session, holding the transcript once.

A packed sequence is the session's shared prompt prefix (the transcript) followed by every item's own
part (item prompt + target), each item a block. A block attention mask lets every item token see the
prefix and the earlier tokens of its own block, never another item; position ids continue from the prefix
in every block. Each item therefore sees exactly the tokens and positions of its per-item example, so the
loss and the gradients equal those of the per-item examples batched together (tests/test_packing.py).

Two ways to apply the mask. `sdpa`/`eager` models get it as a dense 4-D mask (simple, but attention then
costs (prefix + all items)^2). Models switched to PACKED_ATTENTION (what training does for SDPA models)
run the structure instead: the prefix causally in one SDPA call, then every item's block against the
prefix plus itself in one batched SDPA call, so no time goes to masked-out item-to-item pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from care.errors import CareError
from care.model.loss import weighted_ce_sum
from care.model.prompts import IGNORE_INDEX, Example

MASK_IMPLEMENTATIONS = ("sdpa", "eager")  # attention kernels that take an arbitrary 4-D mask
PACKED_ATTENTION = "care_packed_sdpa"  # registered with transformers by `use_packed_attention`


@dataclass
class PackedSession:
    """One session's items packed behind its shared prefix; `blocks[t]` is 0 on the prefix and k on item k.

    Several sessions can share one sequence (`concat_packed`): `starts` holds where each begins, each keeps its
    own prefix (block 0, positions from 0) and its items' blocks are numbered on from the previous session's."""

    session_id: str
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    blocks: list[int]
    n_items: int
    starts: tuple[int, ...] = (0,)


def shared_prefix_length(examples: list[Example]) -> int:
    """Length of the token prefix all `examples` share, ending before the position that predicts the
    first target token of any of them (so every target is predicted from the per-item part)."""
    first = min(next(i for i, x in enumerate(e.labels) if x != IGNORE_INDEX) for e in examples)
    limit = first - 1
    ref = examples[0].input_ids
    n = 0
    while n < limit and all(e.input_ids[n] == ref[n] for e in examples[1:]):
        n += 1
    return n


def pack_session(examples: list[Example]) -> PackedSession:
    """Pack the examples of one session (in the given order) into one sequence."""
    if not examples:
        raise CareError("cannot pack an empty session")
    sid = examples[0].session_id
    if any(e.session_id != sid for e in examples):
        raise CareError(f"session={sid}: packing examples of several sessions together")
    for e in examples:
        if len(e.labels) != len(e.input_ids):
            raise CareError(f"session={sid} item={e.item_id}: labels and input ids differ in length")
    shared = shared_prefix_length(examples)
    ids = list(examples[0].input_ids[:shared])
    labels = [IGNORE_INDEX] * shared
    positions = list(range(shared))
    blocks = [0] * shared
    for k, e in enumerate(examples, start=1):
        tail = len(e.input_ids) - shared
        ids += e.input_ids[shared:]
        labels += e.labels[shared:]
        positions += range(shared, shared + tail)
        blocks += [k] * tail
    return PackedSession(sid, ids, labels, positions, blocks, len(examples))


def pack_by_session(examples: list[Example]) -> list[PackedSession]:
    """One packed sequence per session, sessions and items in order of first appearance."""
    return [pack_session(g) for g in by_session(examples).values()]


def by_session(examples: list[Example]) -> dict[str, list[Example]]:
    """The examples of each session, sessions and items in order of first appearance."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.session_id, []).append(e)
    return groups


def concat_packed(sessions: list[PackedSession]) -> PackedSession:
    """Several packed sessions as one sequence, in order: the loss and gradients of the sequence are the sums of
    the sessions' own (each item still sees exactly its prefix and itself; no token sees another session)."""
    if len(sessions) == 1:
        return sessions[0]
    ids, labels, positions, blocks, starts, offset = [], [], [], [], [], 0
    for s in sessions:
        if s.starts != (0,):
            raise CareError(f"session={s.session_id}: already a concatenation of packed sessions")
        starts.append(len(ids))
        ids += s.input_ids
        labels += s.labels
        positions += s.position_ids
        blocks += [b + offset if b else 0 for b in s.blocks]
        offset += s.n_items
    return PackedSession("+".join(s.session_id for s in sessions), ids, labels, positions, blocks, offset,
                         tuple(starts))


def cut_prefix(packed: PackedSession, n: int) -> PackedSession:
    """The session with its shared prefix cut to its first `n` tokens, items unchanged (positions moved up): a
    stand-in of the same structure for memory probes (care.model.memory)."""
    shared = packed.blocks.count(0)
    if packed.starts != (0,) or n >= shared:
        raise CareError(f"session={packed.session_id}: cannot cut a prefix of {shared} tokens to {n}")
    tail = slice(shared, None)
    return PackedSession(packed.session_id, packed.input_ids[:n] + packed.input_ids[tail],
                         [IGNORE_INDEX] * n + packed.labels[tail], list(range(n)) + [p - shared + n for p in
                                                                                  packed.position_ids[tail]],
                         [0] * n + packed.blocks[tail], packed.n_items)


def _session_of(blocks_len: int, starts) -> list[int]:
    bounds = list(starts[1:]) + [blocks_len]
    return [k for k, end in enumerate(bounds) for _ in range(end - (starts[k]))]


def block_mask(blocks, implementation: str, dtype, starts=(0,)):
    """The (1, 1, n, n) attention mask of a packed sequence: causal, and a token of item block k attends
    to its session's prefix (block 0) and to block k only. Boolean (True = attend) for SDPA, additive for eager."""
    import torch

    if implementation not in MASK_IMPLEMENTATIONS:
        raise CareError(f"session packing needs an attention implementation that takes a 4-D mask "
                        f"({', '.join(MASK_IMPLEMENTATIONS)}); the model uses {implementation!r}: "
                        "load it with attn_implementation='sdpa' or set train.packing=item")
    b = torch.as_tensor(blocks)
    n = b.numel()
    causal = torch.ones((n, n), dtype=torch.bool, device=b.device).tril()
    allowed = causal & ((b[None, :] == 0) | (b[None, :] == b[:, None]))
    if len(starts) > 1:
        session = torch.tensor(_session_of(n, starts), device=b.device)
        allowed &= session[None, :] == session[:, None]
    if implementation == "sdpa":
        return allowed[None, None]
    additive = torch.zeros((n, n), dtype=dtype, device=b.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


@dataclass
class BlockLayout:
    """Index tensors of a packed sequence for PACKED_ATTENTION: each session's (start, prefix length, items),
    the longest prefix, (items, longest block) positions of every item's tokens, where the real ones sit in that
    grid flattened (in sequence order), how many item tokens each session has, and the items' (prefix + block)
    key mask."""

    sessions: list[tuple[int, int, int]]
    prefix: int
    index: "torch.Tensor"  # noqa: F821
    real: "torch.Tensor"  # noqa: F821
    item_tokens: list[int]
    mask: "torch.Tensor"  # noqa: F821


def block_layout(blocks: list[int], device, starts=(0,)) -> BlockLayout:
    """The BlockLayout of a packed sequence's `blocks` (per session: its prefix first, then its items in order,
    each contiguous), built on the host and moved to `device` without waiting for it."""
    import torch

    bounds = list(starts) + [len(blocks)]
    sessions, item_starts, lengths, item_tokens = [], [], [], []
    for a, b in zip(bounds, bounds[1:]):
        prefix = 0
        while a + prefix < b and blocks[a + prefix] == 0:
            prefix += 1
        before, last = len(item_starts), 0
        for t in range(a + prefix, b):
            if blocks[t] != last:
                if blocks[t] != len(item_starts) + 1:
                    raise CareError("a packed sequence must hold each session's whole prefix first, then its items "
                                    "in order, each contiguous")
                item_starts.append(t)
                lengths.append(0)
                last = blocks[t]
            lengths[-1] += 1
        sessions.append((a, prefix, len(item_starts) - before))
        item_tokens.append(b - a - prefix)
    width, widest = max(lengths), max(p for _, p, _ in sessions)
    offsets = torch.arange(width)
    valid = offsets[None, :] < torch.tensor(lengths)[:, None]
    index = torch.where(valid, torch.tensor(item_starts)[:, None] + offsets[None, :], 0)
    own_mask = torch.ones((width, width), dtype=torch.bool).tril()[None] & valid[:, None, :]
    prefix_len = torch.tensor([p for _, p, n in sessions for _ in range(n)])
    seen = torch.arange(widest)[None, None, :] < prefix_len[:, None, None]
    mask = torch.cat([seen.expand(-1, width, -1), own_mask], dim=2)[:, None]
    real = valid.reshape(-1).nonzero(as_tuple=True)[0]

    def move(x):
        return x.pin_memory().to(device, non_blocking=True) if _pinnable(device) else x.to(device)

    return BlockLayout(sessions, widest, move(index), move(real), item_tokens, move(mask))


def _pinnable(device) -> bool:
    import torch

    return torch.device(device).type == "cuda"


def _packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                 care_blocks: BlockLayout | None = None, **kwargs):
    """SDPA over a packed sequence's block structure (`care_blocks`): each session's prefix causally, then every
    item of every session against its session's prefix and itself in one batched call. Plain SDPA for any other
    call."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if care_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if query.shape[0] != 1:
        raise CareError("packed attention takes one packed sequence per forward pass")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups)[0], repeat_kv(value, groups)[0]  # (heads, n, dim)
    q = query[0]
    lay = care_blocks
    drop = dropout if module.training else 0.0
    heads = [sdpa(q[None, :, a:a + p], key[None, :, a:a + p], value[None, :, a:a + p], is_causal=True,
                  dropout_p=drop, scale=scaling)[0] for a, p, _ in lay.sessions]

    def blocks(x):  # (heads, n, dim) -> (items, heads, width, dim)
        return x[:, lay.index].transpose(0, 1)

    def prefix(x, a: int, p: int, items: int):  # the session's prefix, padded to the longest, once per item
        part = x[None, :, a:a + p]
        if p < lay.prefix:
            part = torch.nn.functional.pad(part, (0, 0, 0, lay.prefix - p))
        return part.expand(items, -1, -1, -1)

    def with_prefix(x):
        parts = [prefix(x, a, p, n) for a, p, n in lay.sessions]
        return torch.cat([parts[0] if len(parts) == 1 else torch.cat(parts, dim=0), blocks(x)], dim=2)

    tail = sdpa(blocks(q), with_prefix(key), with_prefix(value), attn_mask=lay.mask, dropout_p=drop, scale=scaling)
    tail = tail.transpose(0, 1).reshape(tail.shape[1], -1, tail.shape[3])[:, lay.real]  # (heads, item tokens, dim)
    if len(heads) == 1:
        out = torch.cat([heads[0], tail], dim=1)[None]
    else:  # sequence order: each session's prefix, then its items
        tails = torch.split(tail, lay.item_tokens, dim=1)
        out = torch.cat([x for pair in zip(heads, tails) for x in pair], dim=1)[None]
    return out.transpose(1, 2).contiguous(), None


def use_packed_attention(model) -> str:
    """Switch an SDPA model to PACKED_ATTENTION (registering it with transformers); returns the previous
    implementation, to pass back to `restore_attention`. Other implementations are left as they are.

    Its mask function builds SDPA's mask for ordinary (padded) batches only: for a packed sequence, which comes
    without a 2-D mask, transformers then builds no (n x n) mask; `_packed_sdpa` runs its block layout instead."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    config = _config(model)
    previous = config._attn_implementation
    if previous == "sdpa":
        AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
        AttentionMaskInterface.register(PACKED_ATTENTION, _padding_mask_only)
        config._attn_implementation = PACKED_ATTENTION
    return previous


def _padding_mask_only(*args, attention_mask=None, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def restore_attention(model, previous: str) -> None:
    _config(model)._attn_implementation = previous


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module", base).config


@dataclass
class PackedInputs:
    """A packed sequence's tensors on the device (moved without waiting for the device) and its loss weight."""

    packed: PackedSession
    ids: "torch.Tensor"  # noqa: F821
    positions: "torch.Tensor"  # noqa: F821
    next_labels: "torch.Tensor"  # noqa: F821
    keep: "torch.Tensor"  # noqa: F821
    attention: dict
    weight: float


def packed_inputs(model, packed: PackedSession, device, score_weight: float = 1.0) -> PackedInputs:
    """Everything one forward over `packed` needs, built on the host and sent to `device` asynchronously, so that
    preparing the next sequence never waits for the device to finish the current one."""
    import torch

    implementation = _config(model)._attn_implementation or "eager"
    next_labels = packed.labels[1:]
    keep = [t for t, x in enumerate(next_labels) if x != IGNORE_INDEX]
    if not keep:
        raise CareError(f"session={packed.session_id}: a packed session has no target tokens")
    pin = _pinnable(device)

    def move(values):
        x = torch.tensor(values, dtype=torch.long)
        return x.pin_memory().to(device, non_blocking=True) if pin else x.to(device)

    if implementation == PACKED_ATTENTION:
        attention = {"attention_mask": None, "care_blocks": block_layout(packed.blocks, device, packed.starts)}
    else:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        attention = {"attention_mask": block_mask(torch.tensor(packed.blocks, device=device), implementation, dtype,
                                                  packed.starts)}
    starts = sum(1 for t in keep if t == 0 or next_labels[t - 1] == IGNORE_INDEX)  # each item's score digit
    return PackedInputs(packed, move([packed.input_ids]), move([packed.position_ids]), move(next_labels), move(keep),
                        attention, len(keep) + (score_weight - 1.0) * starts)


def packed_loss(model, packed: PackedSession | PackedInputs, device, score_weight: float = 1.0):
    """(weighted sum of target-token cross-entropy, weighted target count) of one packed sequence; the
    same numbers `training.target_loss` gives for its per-item examples batched together."""
    x = packed if isinstance(packed, PackedInputs) else packed_inputs(model, packed, device, score_weight)
    out = model(input_ids=x.ids, position_ids=x.positions, logits_to_keep=x.keep, use_cache=False, **x.attention)
    logits = out.logits[0]
    if logits.shape[0] != x.keep.numel():  # a model without logits_to_keep support: all positions came back
        logits = logits[x.keep]
    return weighted_ce_sum(logits, x.next_labels, x.keep, score_weight), x.weight
