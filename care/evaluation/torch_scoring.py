"""Scoring held-out sessions in PyTorch: the score distribution over the scale digits, greedy readout, rationales.

Every (session, item) prompt ends where the score digit is the next token (see `care.model.prompts`). We read
that position's logits: the softmax over the scale-digit logits gives the distribution and the expected
score; the argmax over the whole vocabulary gives the greedy score (a few more greedy tokens are decoded
and parsed when the argmax is not a digit; what cannot be parsed stays None and is counted, never invented).

`shared_cache=True` runs the transcript prefix once per session and all item suffixes of the session in
batched passes over a copy of its key/value cache, computing the LM head only at each item's answer
position. `shared_cache=False` is the naive reference: each item's full prompt on its own. Both give the
same numbers (tests/test_scoring.py); the shared cache is several times faster (benchmarks/score_torch.py).

Nothing here logs transcript or rationale text; the only text in the results is the generated rationale.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal

from care.errors import CareError
from care.data.instrument import Instrument
from care.model.prompts import EncodedSession, PromptBuilder
from care.data.schema import Session

FALLBACK_TOKENS = 4  # extra greedy tokens decoded when the answer-position argmax is not a scale digit

_LEADING_DIGIT = re.compile(r"^\s*(\d)(?!\d)")


# ----------------------------------------------------------------------------------------------- results


@dataclass
class ItemScore:
    item_id: str
    expected: float  # sum_k p_k * point_k, p = softmax over the scale-digit logits
    distribution: list[float]  # p over the scale points, in scale order (sums to 1)
    digit_mass: float  # probability the full-vocabulary softmax puts on the scale digits (sanity check)
    greedy: int | None  # greedy score; None = the greedy text has no leading scale digit (unparsed)
    greedy_text_ok: bool  # the answer-position argmax was itself a scale digit (the trained format)
    rationale: str | None = None  # generated text after the first newline; None when not asked for


@dataclass
class SessionScore:
    session_id: str
    items: dict[str, ItemScore]
    dimensions_expected: dict[str, float]
    dimensions_greedy: dict[str, float | None]  # None when any item of the dimension is unparsed
    truncated: bool = False  # the transcript was cut (its start dropped) to fit the context

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SessionScore":
        items = {k: ItemScore(**v) for k, v in data["items"].items()}
        return cls(**{**data, "items": items})


def parse_score(text: str, points: list[int]) -> int | None:
    """The scale point a greedy text starts with (after optional whitespace), or None."""
    m = _LEADING_DIGIT.match(text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if value in points else None


def _session_score(enc: EncodedSession, instrument: Instrument, items: dict[str, ItemScore]) -> SessionScore:
    dims_e: dict[str, float] = {}
    dims_g: dict[str, float | None] = {}
    for dim, ids in instrument.items_by_dimension.items():
        dims_e[dim] = sum(items[i].expected for i in ids) / len(ids)
        greedy = [items[i].greedy for i in ids]
        dims_g[dim] = None if any(g is None for g in greedy) else sum(greedy) / len(greedy)
    ordered = {i: items[i] for i in instrument.item_ids}
    return SessionScore(enc.session_id, ordered, dims_e, dims_g, enc.truncated)


# ------------------------------------------------------------------------------------------- model parts


class _Parts:
    """The decoder body and LM head of a causal LM (plain or PeftModel-wrapped), and decoding constants."""

    def __init__(self, model, tokenizer, builder: PromptBuilder):
        import torch

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body = inner.get_decoder()
        self.head = inner.get_output_embeddings()
        if self.body is None or self.head is None:
            raise CareError("scoring needs a causal LM with a decoder body and an LM head")
        self.softcap = getattr(inner.config.get_text_config(), "final_logit_softcapping", None)
        self.device = inner.get_input_embeddings().weight.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos = torch.tensor(sorted(e for e in eos if e is not None), device=self.device)
        self.digit_ids = torch.tensor(builder.digit_ids, device=self.device)
        self.points = builder.instrument.scale.points
        self.point_values = torch.tensor(self.points, dtype=torch.float32, device=self.device)
        self.tokenizer = tokenizer

    def logits(self, hidden):
        """LM head on the given rows only, in float32."""
        import torch

        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def run(self, ids, *, attention_mask=None, position_ids=None, cache=None, cache_position=None):
        out = self.body(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            cache_position=cache_position,
            use_cache=True,
        )
        return out.last_hidden_state, out.past_key_values


def _read_answers(parts: _Parts, logits) -> list[dict[str, Any]]:
    """Distribution, expected score, digit mass and first greedy token for each row of answer logits."""
    import torch

    digit_logits = logits[:, parts.digit_ids]
    dist = torch.softmax(digit_logits, dim=-1)
    expected = dist @ parts.point_values
    mass = torch.exp(digit_logits - torch.logsumexp(logits, dim=-1, keepdim=True)).sum(-1)
    first = logits.argmax(-1)
    rows = []
    for b in range(logits.shape[0]):
        rows.append(
            {
                "expected": float(expected[b]),
                "distribution": [float(x) for x in dist[b]],
                "digit_mass": float(mass[b]),
                "first": int(first[b]),
            }
        )
    return rows


def _continue_greedy(parts: _Parts, cache, attention_mask, next_pos, next_slot: int, first, steps: int) -> list[list[int]]:
    """Greedy decoding for a batch whose prompts (possibly right-padded) are in `cache`.

    `first` holds each row's first generated token (from the answer logits); `next_pos` each row's next
    position id (its real prompt length); `next_slot` the next cache slot (same for all rows). Returns the
    generated ids per row: `first` plus up to `steps` more, stopping after EOS.
    """
    import torch

    bsz = first.shape[0]
    tokens = [[int(t)] for t in first]
    done = torch.isin(first, parts.eos)
    current = first
    for step in range(steps):
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(bsz, 1)], dim=1)
        hidden, cache = parts.run(
            current[:, None],
            attention_mask=attention_mask,
            position_ids=(next_pos + step)[:, None],
            cache=cache,
            cache_position=torch.tensor([next_slot + step], device=parts.device),
        )
        nxt = parts.logits(hidden[:, -1]).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, parts.pad_id), nxt)
        for b in range(bsz):
            if not bool(done[b]):
                tokens[b].append(int(nxt[b]))
        done = done | torch.isin(nxt, parts.eos)
        current = nxt
    return tokens


def _item_score(parts: _Parts, item_id: str, answer: dict[str, Any], generated: list[int] | None, rationales: bool) -> ItemScore:
    first = answer["first"]
    if first in parts.digit_ids.tolist():
        greedy: int | None = parts.points[parts.digit_ids.tolist().index(first)]
        text_ok = True
    else:
        head = (generated or [first])[: 1 + FALLBACK_TOKENS]
        greedy = parse_score(parts.tokenizer.decode(head, skip_special_tokens=True), parts.points)
        text_ok = False
    rationale = None
    if rationales:
        text = parts.tokenizer.decode(generated or [first], skip_special_tokens=True)
        rationale = text.split("\n", 1)[1].strip() if "\n" in text else ""
    return ItemScore(item_id, answer["expected"], answer["distribution"], answer["digit_mass"], greedy, text_ok, rationale)


def _gen_steps(parts: _Parts, answers: list[dict[str, Any]], rationales: bool, max_new_tokens: int) -> int:
    if rationales:
        return max(max_new_tokens - 1, 0)
    digits = set(parts.digit_ids.tolist())
    return FALLBACK_TOKENS if any(a["first"] not in digits for a in answers) else 0


# ------------------------------------------------------------------------------------------------ scoring


def _broadcast_cache(prefix_kv, bsz: int):
    """A fresh cache holding the prefix keys/values broadcast over `bsz` rows, without copying them.

    The layers hold stride-0 views; the suffix pass's update concatenates onto them, which is the only copy
    (DynamicCache(ddp_cache_data=...) would copy the prefix once more first).
    """
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=[(k[:, :, :0].expand(bsz, -1, -1, -1), v[:, :, :0].expand(bsz, -1, -1, -1))
                                         for k, v in prefix_kv])
    for layer, (k, v) in zip(cache.layers, prefix_kv):
        layer.keys, layer.values = k.expand(bsz, -1, -1, -1), v.expand(bsz, -1, -1, -1)
    return cache


def _score_shared(parts: _Parts, enc: EncodedSession, item_ids: list[str], batch_size: int, rationales: bool,
                  max_new_tokens: int) -> dict[str, ItemScore]:
    import torch

    dev = parts.device
    n_prefix = len(enc.prefix)
    _, prefix_cache = parts.run(torch.tensor([enc.prefix], device=dev))  # body only: no LM head on the prefix
    prefix_kv = [(layer.keys, layer.values) for layer in prefix_cache.layers]
    out: dict[str, ItemScore] = {}
    for start in range(0, len(item_ids), batch_size):
        batch = item_ids[start : start + batch_size]
        bsz = len(batch)
        lens = torch.tensor([len(enc.items[i]) for i in batch], device=dev)
        width = int(lens.max())
        ids = torch.full((bsz, width), parts.pad_id, dtype=torch.long, device=dev)
        for b, item in enumerate(batch):
            ids[b, : len(enc.items[item])] = torch.tensor(enc.items[item], device=dev)
        suffix_mask = (torch.arange(width, device=dev)[None, :] < lens[:, None]).long()
        mask = torch.cat([torch.ones(bsz, n_prefix, dtype=torch.long, device=dev), suffix_mask], dim=1)
        cache = _broadcast_cache(prefix_kv, bsz)
        positions = n_prefix + torch.arange(width, device=dev)
        hidden, cache = parts.run(
            ids,
            attention_mask=mask,
            position_ids=positions[None, :].expand(bsz, -1),
            cache=cache,
            cache_position=positions,
        )
        last = hidden[torch.arange(bsz, device=dev), lens - 1]  # each item's answer position
        answers = _read_answers(parts, parts.logits(last))
        steps = _gen_steps(parts, answers, rationales, max_new_tokens)
        generated: list[list[int] | None] = [None] * bsz
        if steps:
            first = torch.tensor([a["first"] for a in answers], device=dev)
            generated = _continue_greedy(parts, cache, mask, n_prefix + lens, n_prefix + width, first, steps)
        for b, item in enumerate(batch):
            out[item] = _item_score(parts, item, answers[b], generated[b], rationales)
    return out


def _score_naive(parts: _Parts, enc: EncodedSession, item_ids: list[str], rationales: bool,
                 max_new_tokens: int) -> dict[str, ItemScore]:
    import torch

    dev = parts.device
    out: dict[str, ItemScore] = {}
    for item in item_ids:
        prompt = enc.prefix + enc.items[item]
        hidden, cache = parts.run(torch.tensor([prompt], device=dev))
        answers = _read_answers(parts, parts.logits(hidden[:, -1]))
        steps = _gen_steps(parts, answers, rationales, max_new_tokens)
        generated = None
        if steps:
            first = torch.tensor([answers[0]["first"]], device=dev)
            mask = torch.ones(1, len(prompt), dtype=torch.long, device=dev)
            generated = _continue_greedy(parts, cache, mask, torch.tensor([len(prompt)], device=dev), len(prompt),
                                         first, steps)[0]
        out[item] = _item_score(parts, item, answers[0], generated, rationales)
    return out


def score_sessions(model, tokenizer, builder: PromptBuilder, sessions: Iterable[Session], *, batch_size: int = 16,
                   rationales: bool = False, max_new_tokens: int = 96, shared_cache: bool = True,
                   progress: bool = True) -> list[SessionScore]:
    """Score every item of every session (see the module docstring). Deterministic; leaves the model's mode as found."""
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise CareError(f"batch_size must be at least 1 (got {batch_size})")
    sessions = list(sessions)
    parts = _Parts(model, tokenizer, builder)
    item_ids = builder.instrument.item_ids
    was_training = model.training
    model.eval()
    results = []
    try:
        with torch.inference_mode():
            for session in tqdm(sessions, desc="scoring", unit="session", disable=not progress):
                enc = builder.encode(session)
                if shared_cache:
                    items = _score_shared(parts, enc, item_ids, batch_size, rationales, max_new_tokens)
                else:
                    items = _score_naive(parts, enc, item_ids, rationales, max_new_tokens)
                results.append(_session_score(enc, builder.instrument, items))
    finally:
        model.train(was_training)
    return results


# ------------------------------------------------------------------------------------------------ readout


def readout(scores: list[SessionScore], instrument: Instrument, mode: Literal["expected", "greedy"] = "expected"):
    """Predictions per item and per dimension, and how many item scores were unparsed (greedy mode only).

    Returns (item_preds {session_id: {item: float | None}}, dim_preds {session_id: {dim: float | None}},
    n_unparsed). In greedy mode an unparsed item is None and its dimension is None; callers must count or
    drop those sessions, never fill them in.
    """
    if mode not in ("expected", "greedy"):
        raise CareError(f"unknown readout mode {mode!r} (expected or greedy)")
    item_preds: dict[str, dict[str, float | None]] = {}
    dim_preds: dict[str, dict[str, float | None]] = {}
    n_unparsed = 0
    for s in scores:
        if mode == "expected":
            item_preds[s.session_id] = {i: s.items[i].expected for i in instrument.item_ids}
            dim_preds[s.session_id] = {d: s.dimensions_expected[d] for d in instrument.dimensions}
        else:
            preds = {i: None if s.items[i].greedy is None else float(s.items[i].greedy) for i in instrument.item_ids}
            n_unparsed += sum(v is None for v in preds.values())
            item_preds[s.session_id] = preds
            dim_preds[s.session_id] = {d: s.dimensions_greedy[d] for d in instrument.dimensions}
    return item_preds, dim_preds, n_unparsed


# ----------------------------------------------------------------------------------------- rationale text

_QUOTES = [re.compile(r"“([^”]*)”"), re.compile(r'"([^"]*)"'), re.compile(r"「([^」]*)」")]
_EDGE = " \t\r\n，。！？、；：,.!?;:…"


def quoted_spans(text: str) -> list[str]:
    """Spans quoted with “…”, "…" or 「…」, edge whitespace/punctuation stripped, at least 2 characters."""
    spans = []
    for pattern in _QUOTES:
        for m in pattern.finditer(text):
            span = m.group(1).strip(_EDGE)
            if len(span) >= 2:
                spans.append(span)
    return spans


class _CharTokenizer:
    """ROUGE tokenisation for Chinese: one token per non-space character."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def _bleu(hyps: list[str], refs: list[str], language: str) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if language == "zh" else "13a").score)


def rationale_quality(pairs: list[tuple[str, str, list[str], str]]) -> dict[str, Any]:
    """Generated vs reference rationales: corpus BLEU (sacrebleu, 0-100), mean ROUGE-L F (0-1), grounding.

    Each pair is (generated, reference, transcript utterances, language). Grounding rate = share of quoted
    spans in the generated rationales found verbatim in one of that session's utterances. With several
    languages, `bleu` is the pair-weighted mean of per-language corpus BLEU (`by_language` has each).
    No text in the result.
    """
    from rouge_score import rouge_scorer

    by_lang: dict[str, dict[str, list]] = {}
    for generated, reference, utterances, language in pairs:
        g = by_lang.setdefault(language, {"hyp": [], "ref": [], "utt": []})
        g["hyp"].append(generated or "")
        g["ref"].append(reference or "")
        g["utt"].append(utterances)
    total = {"n_pairs": 0, "n_quotes": 0, "n_quotes_grounded": 0, "bleu_sum": 0.0, "rouge_sum": 0.0}
    langs: dict[str, dict[str, Any]] = {}
    for language, g in sorted(by_lang.items()):
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer() if language == "zh" else None)
        rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(g["hyp"], g["ref"])]
        n_quotes = n_grounded = 0
        for hyp, utts in zip(g["hyp"], g["utt"]):
            for span in quoted_spans(hyp):
                n_quotes += 1
                n_grounded += any(span in u for u in utts)
        n = len(g["hyp"])
        bleu = _bleu(g["hyp"], g["ref"], language)
        langs[language] = {
            "n_pairs": n,
            "bleu": bleu,
            "rouge_l_f": sum(rouge) / n,
            "n_quotes": n_quotes,
            "n_quotes_grounded": n_grounded,
            "grounding_rate": n_grounded / n_quotes if n_quotes else None,
        }
        total["n_pairs"] += n
        total["n_quotes"] += n_quotes
        total["n_quotes_grounded"] += n_grounded
        total["bleu_sum"] += bleu * n
        total["rouge_sum"] += sum(rouge)
    n = total["n_pairs"]
    return {
        "n_pairs": n,
        "bleu": total["bleu_sum"] / n if n else None,
        "rouge_l_f": total["rouge_sum"] / n if n else None,
        "n_quotes": total["n_quotes"],
        "n_quotes_grounded": total["n_quotes_grounded"],
        "grounding_rate": total["n_quotes_grounded"] / total["n_quotes"] if total["n_quotes"] else None,
        "by_language": langs,
    }
