"""Reading item scores off a causal LM, once for every backend (PyTorch and ONNX Runtime).

Every (session, item) prompt ends where the score's answer is the next token (see `care.model.prompts`): the
scale point's digit, or the scale's one-character answer. That position's logits give the distribution
(softmax over the logits of the scale's answer tokens, "digits" below), the expected score, the
probability mass on the digits, and the greedy score: the argmax over the whole vocabulary, or, when that is
not a scale answer, a few more greedy tokens decoded and parsed; what cannot be parsed stays None and is counted,
never invented. Optional rationales come from bounded greedy decoding that reuses the prompt's cache; with
`grounded_quotes` (the default) the text inside quotation marks is constrained to verbatim spans of the
session's turns (`care.evaluation.grounding`), and each rationale lists where its quotes are
(`quotes: [{turn, start, end}]`, character offsets in that turn's text).

`shared_cache=True` runs the transcript prefix once per session and the item suffixes in batches over its
key/values, left-padded so that every item's answer position is the last column (position ids continue the
prefix; the padding is masked). With `session_batch` > 1 the prefixes of that many sessions run as one
left-padded batch and the item rows of all of them are cut into batches of `batch_size`, each row over its
own session's key/values (`Backend.select`). `shared_cache=False` is the reference: each item's full prompt
on its own. All give the same numbers (tests/test_scoring.py, tests/test_score_cli.py).

A backend (`Backend`) runs forward passes and hands back float64 numpy logits, so everything here is numpy;
its key/values (`past`) stay wherever the backend keeps them (on the device) and are only passed along.
Nothing here logs transcript or rationale text; the only text in the results is the generated rationale.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Protocol

import numpy as np

from care.data.instrument import Instrument
from care.data.schema import Session
from care.errors import CareError
from care.evaluation.grounding import QuoteGuide, TranscriptIndex, locate_quotes, token_bytes
from care.model.prompts import EncodedSession, PromptBuilder

FALLBACK_TOKENS = 4  # extra greedy tokens decoded when the answer-position argmax is not a scale digit

_LEADING_ANSWER = re.compile(r"^\s*(\d(?!\d)|[A-Za-z](?![A-Za-z]))")


@dataclass
class ItemScore:
    item_id: str
    expected: float  # sum_k p_k * point_k, p = softmax over the scale-digit logits
    distribution: list[float]  # p over the scale points, in scale order (sums to 1)
    digit_mass: float  # probability the full-vocabulary softmax puts on the scale digits (sanity check)
    greedy: int | None  # greedy score; None = the greedy text has no leading scale digit (unparsed)
    greedy_text_ok: bool  # the answer-position argmax was itself a scale digit (the trained format)
    rationale: str | None = None  # generated text after the first newline; None when not asked for
    # the rationale's quotations found verbatim in a turn: [{turn, start, end}] (character offsets in that
    # turn's text); with grounded quotes that is every closed quotation. None when no rationale was asked for
    quotes: list[dict[str, int]] | None = None


@dataclass
class SessionScore:
    session_id: str
    items: dict[str, ItemScore]
    dimensions_expected: dict[str, float]
    dimensions_greedy: dict[str, float | None]  # None when any item of the dimension is unparsed
    truncated: bool = False  # the transcript was cut to fit the context (model.context_policy)
    prefix_tokens: int = 0  # tokens of the shared prompt prefix (instruction and transcript) after any cut

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SessionScore":
        items = {k: ItemScore(**v) for k, v in data["items"].items()}
        return cls(**{**data, "items": items})


class Backend(Protocol):
    """A causal LM with a key/value cache, as the scoring loop drives it."""

    def forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: Any) -> tuple[np.ndarray, Any]:
        """One pass over `ids` (batch, n) after `past`; `mask` covers past + ids. Returns the last position's
        logits (batch, vocab) in float64 and the present key/values (`past` may be updated in place)."""

    def select(self, past: Any, rows: np.ndarray) -> Any:
        """Rows `rows` (indices into the batch of `past`, repeats allowed) as a new past, on the same device,
        which `forward` may extend without touching the original."""

    def empty_past(self, batch: int) -> Any:
        """The past of no tokens."""


@dataclass(frozen=True)
class _Answer:
    expected: float
    distribution: list[float]
    digit_mass: float
    first: int  # the whole-vocabulary argmax: the first greedy token


def parse_score(text: str, points: list[int], answers: list[str] | None = None) -> int | None:
    """The scale point a greedy text starts with (after optional whitespace), or None.

    `answers` are what the model writes per point (default: the points' digits); an answer counts only when
    no character of its kind (a digit after a digit, a letter after a letter) follows it."""
    answers = answers or [str(p) for p in points]
    m = _LEADING_ANSWER.match(text)
    if m is None or m.group(1) not in answers:
        return None
    return points[answers.index(m.group(1))]


def pad_id(tokenizer) -> int:
    """The id that fills padding: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def digit_distribution(logits: np.ndarray, digit_ids: list[int]) -> np.ndarray:
    """Per row of answer logits, the softmax over the scale-digit logits (float64)."""
    digit = np.asarray(logits, dtype=np.float64)[:, np.asarray(digit_ids)]
    p = np.exp(digit - digit.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _read_answers(logits: np.ndarray, digit_ids: list[int], points: list[int]) -> list[_Answer]:
    dist = digit_distribution(logits, digit_ids)
    expected = dist @ np.asarray(points, dtype=np.float64)
    top = logits.max(-1, keepdims=True)
    lse = top + np.log(np.exp(logits - top).sum(-1, keepdims=True))
    mass = np.exp(logits[:, np.asarray(digit_ids)] - lse).sum(-1)
    first = logits.argmax(-1)
    return [_Answer(float(expected[b]), [float(x) for x in dist[b]], float(mass[b]), int(first[b]))
            for b in range(logits.shape[0])]


def _generation_steps(answers: list[_Answer], digit_ids: list[int], rationales: bool, max_new_tokens: int) -> int:
    if rationales:
        return max(max_new_tokens - 1, 0)
    return min(FALLBACK_TOKENS, max_new_tokens) if any(a.first not in digit_ids for a in answers) else 0


@dataclass
class _RationaleContext:
    """What rationale decoding needs about one session: its turns and quote marks, and (grounded quotes) the
    transcript index that guides each row, whose text then comes from the token bytes it was checked on."""

    turns: list[str]
    pairs: list[tuple[str, str]]
    index: TranscriptIndex | None
    decode: Callable[[list[int]], str]

    def guides(self, rows: int) -> list[QuoteGuide] | None:
        return None if self.index is None else [QuoteGuide(self.index) for _ in range(rows)]


def _rationale_context(builder: PromptBuilder, session: Session, grounded: bool) -> _RationaleContext:
    turns = [t.text for t in session.turns]
    pairs = list(builder.instrument.prompt_texts(session.language).quotes)
    if not grounded:
        return _RationaleContext(turns, pairs, None, lambda ids: builder.tokenizer.decode(ids, skip_special_tokens=True))
    table = token_bytes(builder.tokenizer)
    return _RationaleContext(turns, pairs, TranscriptIndex(turns, pairs, table, session.language), table.decode)


def _first_tokens(logits: np.ndarray, answers: list[_Answer], guides: list[QuoteGuide] | None, steps: int) -> list[int]:
    """The first generated token per row: the answer-position argmax, or the best token the guide allows."""
    if guides is None:
        return [a.first for a in answers]
    return [g.choose(logits[b], last=steps == 0) for b, g in enumerate(guides)]


def _continue_greedy(backend: Backend, past, mask: np.ndarray, next_pos: np.ndarray, first: list[int], steps: int,
                     eos_ids: list[int], pad: int, guides: list[QuoteGuide] | None = None) -> list[list[int]]:
    """Greedy decoding after prompts held in `past`: `first` plus up to `steps` tokens per row, stopping after EOS.

    `next_pos` holds each row's next position id (its real prompt length). `guides` (one per row) constrain
    quotations to the transcript.
    """
    tokens = [[t] for t in first]
    current = np.asarray(first, dtype=np.int64)
    done = np.isin(current, eos_ids)
    for step in range(steps):
        if done.all():
            break
        mask = np.concatenate([mask, np.ones((len(first), 1), np.int64)], axis=1)
        logits, past = backend.forward(current[:, None], mask, (next_pos + step)[:, None], past)
        if guides is None:
            nxt = np.where(done, pad, logits.argmax(-1))
        else:
            nxt = np.array([pad if done[b] else guides[b].choose(logits[b], last=step == steps - 1)
                            for b in range(len(first))], dtype=np.int64)
        for b in np.flatnonzero(~done):
            tokens[b].append(int(nxt[b]))
        done |= np.isin(nxt, eos_ids)
        current = nxt
    return tokens


def _item_score(builder: PromptBuilder, item_id: str, answer: _Answer, generated: list[int] | None,
                context: _RationaleContext | None) -> ItemScore:
    digit_ids, points, decode = builder.digit_ids, builder.instrument.scale.points, builder.tokenizer.decode
    tokens = generated or [answer.first]
    if answer.first in digit_ids:
        greedy, text_ok = points[digit_ids.index(answer.first)], True
    else:
        greedy, text_ok = parse_score(decode(tokens[: 1 + FALLBACK_TOKENS], skip_special_tokens=True), points,
                                      builder.instrument.scale.answer_symbols), False
    rationale = quotes = None
    if context is not None:
        text = context.decode(tokens)
        rationale = text.split("\n", 1)[1].strip() if "\n" in text else ""
        quotes = locate_quotes(rationale, context.turns, context.pairs)
    return ItemScore(item_id, answer.expected, answer.distribution, answer.digit_mass, greedy, text_ok, rationale,
                     quotes)


def _left_padded(rows: list[list[int]], pad: int, start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, position ids) of token rows left-padded to one width; row r's positions run from start[r]
    (padding repeats start[r] and is masked)."""
    lens = np.array([len(r) for r in rows])
    width = int(lens.max())
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    positions = np.repeat(np.asarray(start, np.int64)[:, None], width, axis=1)
    for b, row in enumerate(rows):
        k = lens[b]
        ids[b, width - k :] = row
        mask[b, width - k :] = 1
        positions[b, width - k :] += np.arange(k)
    return ids, mask, positions


def item_batches(backend: Backend, encs: EncodedSession | list[EncodedSession], item_ids: list[str], batch_size: int,
                 pad: int) -> Iterator[tuple[list[tuple[int, str]], np.ndarray, np.ndarray, Any, np.ndarray]]:
    """One prefix pass over the sessions `encs` (left-padded), then their item suffixes in batches of
    `batch_size` rows over it: per batch ((session index, item id) per row, prompt lengths, answer logits,
    present, mask)."""
    encs = [encs] if isinstance(encs, EncodedSession) else list(encs)
    n = np.array([len(e.prefix) for e in encs])
    ids, prefix_mask, positions = _left_padded([e.prefix for e in encs], pad, np.zeros(len(encs), np.int64))
    _, prefix_past = backend.forward(ids, prefix_mask, positions, backend.empty_past(len(encs)))
    rows = [(s, item) for s in range(len(encs)) for item in item_ids]
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        sel = np.array([s for s, _ in batch])
        ids, suffix_mask, positions = _left_padded([encs[s].items[i] for s, i in batch], pad, n[sel])
        mask = np.concatenate([prefix_mask[sel], suffix_mask], axis=1)
        logits, present = backend.forward(ids, mask, positions, backend.select(prefix_past, sel))
        yield batch, n[sel] + suffix_mask.sum(1), logits, present, mask


def _score_shared(backend: Backend, builder: PromptBuilder, encs: list[EncodedSession], eos_ids: list[int],
                  batch_size: int, contexts: list[_RationaleContext] | None,
                  max_new_tokens: int) -> list[dict[str, ItemScore]]:
    pad = pad_id(builder.tokenizer)
    out: list[dict[str, ItemScore]] = [{} for _ in encs]
    points = builder.instrument.scale.points
    for batch, lens, logits, past, mask in item_batches(backend, encs, builder.instrument.item_ids, batch_size, pad):
        answers = _read_answers(logits, builder.digit_ids, points)
        steps = _generation_steps(answers, builder.digit_ids, contexts is not None, max_new_tokens)
        generated: list[list[int] | None] = [None] * len(batch)
        if steps:
            guides = None
            if contexts is not None and contexts[0].index is not None:
                guides = [QuoteGuide(contexts[s].index) for s, _ in batch]
            first = _first_tokens(logits, answers, guides, steps)
            generated = _continue_greedy(backend, past, mask, lens, first, steps, eos_ids, pad, guides)
        for b, (s, item) in enumerate(batch):
            out[s][item] = _item_score(builder, item, answers[b], generated[b], contexts[s] if contexts else None)
    return out


def _score_each(backend: Backend, builder: PromptBuilder, enc: EncodedSession, eos_ids: list[int],
                context: _RationaleContext | None, max_new_tokens: int) -> dict[str, ItemScore]:
    pad, out = pad_id(builder.tokenizer), {}
    for item in builder.instrument.item_ids:
        prompt = enc.prefix + enc.items[item]
        k = len(prompt)
        mask = np.ones((1, k), np.int64)
        logits, past = backend.forward(np.asarray([prompt], np.int64), mask, np.arange(k)[None, :], backend.empty_past(1))
        answer = _read_answers(logits, builder.digit_ids, builder.instrument.scale.points)[0]
        steps = _generation_steps([answer], builder.digit_ids, context is not None, max_new_tokens)
        generated = None
        if steps:
            guides = context.guides(1) if context is not None else None
            first = _first_tokens(logits, [answer], guides, steps)
            generated = _continue_greedy(backend, past, mask, np.array([k]), first, steps, eos_ids, pad, guides)[0]
        out[item] = _item_score(builder, item, answer, generated, context)
    return out


def _session_score(enc: EncodedSession, instrument: Instrument, items: dict[str, ItemScore]) -> SessionScore:
    ordered = {i: items[i] for i in instrument.item_ids}
    expected = instrument.dimension_scores({i: s.expected for i, s in ordered.items()})
    greedy = instrument.dimension_scores({i: s.greedy for i, s in ordered.items()})
    return SessionScore(enc.session_id, ordered, expected, greedy, enc.truncated, len(enc.prefix))


def score_sessions(backend: Backend, builder: PromptBuilder, sessions: Iterable[Session], *, eos_ids: Iterable[int],
                   batch_size: int = 16, rationales: bool = False, max_new_tokens: int = 96, shared_cache: bool = True,
                   progress: bool = True, grounded_quotes: bool = True, session_batch: int = 1) -> list[SessionScore]:
    """Score every item of every session (see the module docstring); `eos_ids` end greedy decoding.

    `batch_size`: item rows per forward pass; `session_batch`: sessions whose transcripts run as one batch
    (shared cache only; the sessions are taken in input order). `grounded_quotes` (with `rationales`):
    quotations are constrained to verbatim spans of the transcript. `max_new_tokens` also bounds the greedy
    fallback (0: the answer position only, when only the expected score is read)."""
    from tqdm.auto import tqdm

    sessions = list(sessions)
    results: list[SessionScore] = []
    with tqdm(total=len(sessions), desc="scoring", unit="session", disable=not progress, mininterval=1.0) as bar:
        for group in iter_scores(backend, builder, sessions, eos_ids=eos_ids, batch_size=batch_size,
                                 rationales=rationales, max_new_tokens=max_new_tokens, shared_cache=shared_cache,
                                 grounded_quotes=grounded_quotes, session_batch=session_batch):
            results += group
            bar.update(len(group))
    return results


def iter_scores(backend: Backend, builder: PromptBuilder, sessions: Iterable[Session], *, eos_ids: Iterable[int],
                batch_size: int = 16, rationales: bool = False, max_new_tokens: int = 96, shared_cache: bool = True,
                grounded_quotes: bool = True, session_batch: int = 1) -> Iterator[list[SessionScore]]:
    """`score_sessions` as a stream: takes `session_batch` sessions at a time from `sessions` (any iterable, read
    lazily) and yields their scores before reading more, so memory holds one group, whatever the input's size."""
    if batch_size < 1:
        raise CareError(f"batch_size must be at least 1 (got {batch_size})")
    if session_batch < 1:
        raise CareError(f"session_batch must be at least 1 (got {session_batch})")
    eos = sorted(set(eos_ids))
    group = session_batch if shared_cache else 1
    it = iter(sessions)
    while chunk := list(itertools.islice(it, group)):
        encs = [builder.encode(s) for s in chunk]
        contexts = [_rationale_context(builder, s, grounded_quotes) for s in chunk] if rationales else None
        if shared_cache:
            items = _score_shared(backend, builder, encs, eos, batch_size, contexts, max_new_tokens)
        else:
            items = [_score_each(backend, builder, encs[0], eos, contexts[0] if contexts else None, max_new_tokens)]
        yield [_session_score(e, builder.instrument, i) for e, i in zip(encs, items)]


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
