"""The item layout's batches and losses: per-item examples right-padded into micro-batches. (With `share_prefix` a
micro-batch holds one session's items and runs packed, care.model.packing, with its transcript once.)

The loss is the score-weighted target-token cross-entropy of `care.model.loss`; logits are computed only at the
positions that predict a target token (the LM head over a whole transcript would cost as much as the layers).
"""

from __future__ import annotations

from care.errors import CareError
from care.model.loss import weighted_ce, weighted_ce_rows
from care.model.prompts import IGNORE_INDEX, Example


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
    out = model(**inputs, logits_to_keep=positions)
    logits = out.logits
    if logits.shape[1] != positions.numel():  # a model without logits_to_keep support: all positions came back
        logits = logits[:, positions]
    return weighted_ce(logits, next_labels, positions, score_weight)
