"""The naive scorer the benchmarks compare with: one `model.generate` per (session, item) on the full prompt,
one prompt at a time, as the paper's inference does."""

from __future__ import annotations


def naive_scores(model, tok, builder, sessions):
    """(expected, greedy) per item from one `generate` call per item on the full prompt: the expected score from
    the first step's logits, the greedy score parsed from the generated text (up to 1 + FALLBACK_TOKENS
    tokens, as care.evaluation.readout reads it). Runs on the model's device."""
    import torch

    from care.evaluation.readout import FALLBACK_TOKENS, parse_score

    device = next(model.parameters()).device
    digits = torch.tensor(builder.digit_ids, device=device)
    points = torch.tensor(builder.instrument.scale.points, dtype=torch.float64, device=device)
    out = []
    with torch.inference_mode():
        for s in sessions:
            enc = builder.encode(s)
            row = {}
            for item in builder.instrument.item_ids:
                ids = torch.tensor([enc.prefix + enc.items[item]], device=device)
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1 + FALLBACK_TOKENS,
                                     do_sample=False, output_logits=True, return_dict_in_generate=True,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                p = torch.softmax(gen.logits[0][0, digits].double(), -1)
                first = int(gen.sequences[0, ids.shape[1]])
                if first in builder.digit_ids:
                    greedy = builder.instrument.scale.points[builder.digit_ids.index(first)]
                else:
                    greedy = parse_score(tok.decode(gen.sequences[0, ids.shape[1]:], skip_special_tokens=True),
                                         builder.instrument.scale.points)
                row[item] = (float(p @ points), greedy)
            out.append(row)
    return out
