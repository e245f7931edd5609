"""The training loss: cross-entropy over target tokens, each item's score digit weighted.

Every target starts with its score digit; with `score_weight` that token counts `score_weight` times, in the
loss sum and in the normaliser alike. One rule for both layouts: per-item batches (`care.model.training`) and
packed sessions (`care.model.packing`).
"""

from __future__ import annotations

from care.model.prompts import IGNORE_INDEX, Example


def token_weights(next_labels, score_weight: float):
    """Loss weights for next-token targets (along the last dimension): 0 on IGNORE_INDEX, 1 on targets,
    `score_weight` on the first token of each run of targets (an item's score digit)."""
    valid = next_labels != IGNORE_INDEX
    weights = valid.float()
    if score_weight != 1.0:
        starts = valid.clone()
        starts[..., 1:] &= ~valid[..., :-1]
        weights = weights + (score_weight - 1.0) * starts.float()
    return weights


def weighted_ce(logits, next_labels, keep, score_weight: float):
    """(weighted sum of cross-entropies, weighted target count) of `logits` (..., len(keep), vocab) predicting
    `next_labels[..., keep]`, weighted by `token_weights` of the whole `next_labels`."""
    weights = token_weights(next_labels, score_weight)[..., keep]
    return weighted_ce_sum(logits, next_labels, keep, score_weight, weights), float(weights.sum())


def weighted_ce_sum(logits, next_labels, keep, score_weight: float, weights=None):
    """The weighted sum of `weighted_ce` alone: nothing is read back from the device."""
    import torch.nn.functional as F

    targets = next_labels[..., keep]
    if weights is None:
        weights = token_weights(next_labels, score_weight)[..., keep]
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                         reduction="none").reshape(targets.shape)
    return (ce * weights).sum()


def weighted_ce_rows(logits, next_labels, score_weight: float):
    """`weighted_ce` for `logits` (n, vocab) given only at the target positions of `next_labels`, in
    row-major order of `next_labels != IGNORE_INDEX`."""
    import torch.nn.functional as F

    valid = next_labels != IGNORE_INDEX
    weights = token_weights(next_labels, score_weight)[valid]
    ce = F.cross_entropy(logits.float(), next_labels[valid], reduction="none")
    return (ce * weights).sum(), float(weights.sum())


def target_weight(examples: list[Example], score_weight: float) -> float:
    """The weighted target-token count of `examples` (the loss normaliser for a step)."""
    n = sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in examples)
    return n + (score_weight - 1.0) * len(examples)
