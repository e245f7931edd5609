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
from care.model.loss import weighted_ce
from care.model.prompts import IGNORE_INDEX, Example

MASK_IMPLEMENTATIONS = ("sdpa", "eager")  # attention kernels that take an arbitrary 4-D mask
PACKED_ATTENTION = "care_packed_sdpa"  # registered with transformers by `use_packed_attention`


@dataclass
class PackedSession:
    """One session's items packed behind its shared prefix; `blocks[t]` is 0 on the prefix and k on item k."""

    session_id: str
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    blocks: list[int]
    n_items: int


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
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.session_id, []).append(e)
    return [pack_session(g) for g in groups.values()]


def block_mask(blocks, implementation: str, dtype):
    """The (1, 1, n, n) attention mask of a packed sequence: causal, and a token of item block k attends
    to the prefix (block 0) and to block k only. Boolean (True = attend) for SDPA, additive for eager."""
    import torch

    if implementation not in MASK_IMPLEMENTATIONS:
        raise CareError(f"session packing needs an attention implementation that takes a 4-D mask "
                        f"({', '.join(MASK_IMPLEMENTATIONS)}); the model uses {implementation!r}: "
                        "load it with attn_implementation='sdpa' or set train.packing=item")
    b = torch.as_tensor(blocks)
    n = b.numel()
    causal = torch.ones((n, n), dtype=torch.bool, device=b.device).tril()
    allowed = causal & ((b[None, :] == 0) | (b[None, :] == b[:, None]))
    if implementation == "sdpa":
        return allowed[None, None]
    additive = torch.zeros((n, n), dtype=dtype, device=b.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


@dataclass
class BlockLayout:
    """Index tensors of a packed sequence for PACKED_ATTENTION: the prefix length, (items, longest block)
    positions of every item's tokens, where the real ones sit in that grid flattened (in sequence order),
    and the items' (prefix + block) key mask."""

    prefix: int
    index: "torch.Tensor"  # noqa: F821
    real: "torch.Tensor"  # noqa: F821
    mask: "torch.Tensor"  # noqa: F821


def block_layout(blocks: list[int], device) -> BlockLayout:
    """The BlockLayout of a packed sequence's `blocks` (prefix first, then items in order, each contiguous)."""
    import torch

    prefix = blocks.count(0)
    lengths = [0] * max(blocks)
    for b in blocks[prefix:]:
        if b == 0:
            raise CareError("a packed sequence must hold its whole prefix first")
        lengths[b - 1] += 1
    width = max(lengths)
    starts = [prefix + sum(lengths[:k]) for k in range(len(lengths))]
    offsets = torch.arange(width)
    valid = offsets[None, :] < torch.tensor(lengths)[:, None]
    index = torch.where(valid, torch.tensor(starts)[:, None] + offsets[None, :], 0)
    own = torch.ones((width, width), dtype=torch.bool).tril()[None] & valid[:, None, :]
    mask = torch.cat([torch.ones((len(lengths), width, prefix), dtype=torch.bool), own], dim=2)[:, None]
    real = valid.reshape(-1).nonzero(as_tuple=True)[0]
    return BlockLayout(prefix, index.to(device), real.to(device), mask.to(device))


def _packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                 care_blocks: BlockLayout | None = None, **kwargs):
    """SDPA over a packed sequence's block structure (`care_blocks`); plain SDPA for any other call."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if care_blocks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if query.shape[0] != 1:
        raise CareError("packed attention takes one packed session per forward pass")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups)[0], repeat_kv(value, groups)[0]  # (heads, n, dim)
    q = query[0]
    p, lay = care_blocks.prefix, care_blocks
    drop = dropout if module.training else 0.0
    head = sdpa(q[None, :, :p], key[None, :, :p], value[None, :, :p], is_causal=True, dropout_p=drop, scale=scaling)[0]
    items = lay.index.shape[0]

    def blocks(x):  # (heads, n, dim) -> (items, heads, width, dim)
        return x[:, lay.index].transpose(0, 1)

    def with_prefix(x):
        return torch.cat([x[None, :, :p].expand(items, -1, -1, -1), blocks(x)], dim=2)

    tail = sdpa(blocks(q), with_prefix(key), with_prefix(value), attn_mask=lay.mask, dropout_p=drop, scale=scaling)
    tail = tail.transpose(0, 1).reshape(tail.shape[1], -1, tail.shape[3])[:, lay.real]  # (heads, n - prefix, dim)
    out = torch.cat([head, tail], dim=1)[None]
    return out.transpose(1, 2).contiguous(), None


def use_packed_attention(model) -> str:
    """Switch an SDPA model to PACKED_ATTENTION (registering it with transformers); returns the previous
    implementation, to pass back to `restore_attention`. Other implementations are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = _config(model)
    previous = config._attn_implementation
    if previous == "sdpa":
        AttentionInterface.register(PACKED_ATTENTION, _packed_sdpa)
        AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
        config._attn_implementation = PACKED_ATTENTION
    return previous


def restore_attention(model, previous: str) -> None:
    _config(model)._attn_implementation = previous


def _config(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module", base).config


def packed_loss(model, packed: PackedSession, device, score_weight: float = 1.0):
    """(weighted sum of target-token cross-entropy, weighted target count) of one packed session; the
    same numbers `training.target_loss` gives for its per-item examples batched together."""
    import torch

    implementation = _config(model)._attn_implementation or "eager"
    ids = torch.tensor([packed.input_ids], dtype=torch.long, device=device)
    positions = torch.tensor([packed.position_ids], dtype=torch.long, device=device)
    if implementation == PACKED_ATTENTION:
        attention = {"attention_mask": None, "care_blocks": block_layout(packed.blocks, device)}
    else:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        attention = {"attention_mask": block_mask(torch.tensor(packed.blocks, device=device), implementation, dtype)}
    next_labels = torch.tensor(packed.labels[1:], dtype=torch.long, device=device)
    keep = (next_labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    if keep.numel() == 0:
        raise CareError(f"session={packed.session_id}: a packed session has no target tokens")
    out = model(input_ids=ids, position_ids=positions, logits_to_keep=keep, use_cache=False, **attention)
    logits = out.logits[0]
    if logits.shape[0] != keep.numel():  # a model without logits_to_keep support: all positions came back
        logits = logits[keep]
    return weighted_ce(logits, next_labels, keep, score_weight)
