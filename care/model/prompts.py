"""Prompts and training targets: one example per (session, item), in the base model's chat template.

A prompt is split into a transcript prefix (shared by every item of a session) and an item suffix, and
the two are tokenized separately and concatenated, so that training, per-item scoring and scoring with a
shared transcript cache all see exactly the same token ids. The prompt ends where the score's answer (the
scale point's digit, or the scale's one-character answer, `Scale.answer`) is the next token; the target is
that answer, then (rationale targets) a newline and the rationale, then EOS.

`PromptConfig` holds what shapes a prompt (the context, the target's room, the date templates see, the context
policy): built from `model.*` params for training, scoring and export, and read back from a release package's
manifest (its `scoring` section). A transcript too long for `max_length` is cut by whole turns, by the
context policy:
- `keep_end` (default): keep the end; drop turns from the start (the client's context line with them);
- `keep_start_end`: keep the opening (the context line and the first turns, up to half the transcript's
  room) and the end, dropping turns in the middle, where a line `GAP_MARK` stands for them.
If even the last turn alone does not fit, both keep the end of that turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict

from care.errors import CareError
from care.data.instrument import Instrument
from care.data.prompt_texts import PromptTexts, builtin_prompt_texts
from care.data.schema import Session
from care.params import ContextPolicy, Count, ModelParams

IGNORE_INDEX = -100
GAP_MARK = "…"  # the line that stands for the turns keep_start_end dropped (language-neutral)


class PromptConfig(BaseModel):
    """How prompts are built: the context in tokens, the room kept for the target (score + rationale), the date
    chat templates see and the context policy. Every field is required: a manifest lacking one is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_length: Count
    target_tokens: Count
    prompt_date: date
    context_policy: ContextPolicy

    @classmethod
    def from_params(cls, model: ModelParams) -> PromptConfig:
        """The prompt config of `model.*` params (their `auto` values resolved, as `load_params` does)."""
        if model.max_length == "auto":
            raise CareError("model.max_length is still 'auto': load the params with their preset's recipe")
        return cls(max_length=model.max_length, target_tokens=model.target_tokens, prompt_date=model.prompt_date,
                   context_policy=model.context_policy)


def render_transcript(session: Session, texts: PromptTexts | None = None, first_turn: int = 0,
                      clip_chars: int = 0, head: int | None = None) -> str:
    """The dialogue as 'Speaker: text' lines, from `first_turn` on; `clip_chars` cuts the start of that turn.

    `head` (keep_start_end) keeps the context line and the first `head` turns before a `GAP_MARK` line; the
    turns from `first_turn` follow. `texts` is the wording of the session's language (default: the shipped one)."""
    t = texts or builtin_prompt_texts(session.language)
    if t is None:
        raise CareError(f"no prompt wording for language {session.language!r}")
    speakers = {"counselor": t.speakers.counselor, "client": t.speakers.client}
    lines = []
    if session.context and (first_turn == 0 or head is not None):
        lines.append(t.context + session.context)
    if head is not None:
        lines += [speakers.get(turn.speaker, turn.speaker) + t.colon + turn.text for turn in session.turns[:head]]
        lines.append(GAP_MARK)
    for i, turn in enumerate(session.turns[first_turn:]):
        text = turn.text[clip_chars:] if i == 0 else turn.text
        lines.append(speakers.get(turn.speaker, turn.speaker) + t.colon + text)
    return "\n".join(lines)


def item_block(instrument: Instrument, item_id: str, language: str) -> str:
    """The item as the prompt shows it: its text and the scale's options in `language` (each option's
    `{point}` is what the model writes for it: the digit, or the scale's answer character)."""
    t = instrument.prompt_texts(language)
    scale = instrument.scale
    options = t.sep.join(
        t.option.format(point=scale.answer(p), label=scale.labels[p][language]) for p in scale.points
    )
    return t.item.format(text=instrument.item(item_id).text[language], options=options)


def template_variables(prompt_date: date) -> dict[str, Any]:
    """What a chat template may read about the day, pinned to `prompt_date`: Llama 3.1's `date_string` and the
    `strftime_now` function transformers would otherwise answer with today's date."""
    return {"date_string": prompt_date.strftime("%d %b %Y"), "strftime_now": prompt_date.strftime}


def _render(tokenizer, texts: PromptTexts, transcript: str, block: str, prompt_date: date) -> tuple[str, str, int]:
    """The chat-templated prompt, split where the item block starts: (prefix, suffix, where the transcript
    starts in the prefix; -1 for an empty transcript)."""
    user = f"{texts.instruction}\n\n{transcript}\n\n"
    messages = [{"role": "system", "content": texts.system}, {"role": "user", "content": user + block}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **template_variables(prompt_date))
    cut = rendered.rfind(block)
    if cut < 0:
        raise CareError("the chat template changed the item text; cannot split the prompt")
    start = rendered.rfind(transcript, 0, cut) if transcript else -1
    if transcript and start < 0:
        raise CareError("the chat template changed the transcript text; cannot build the prompt")
    return rendered[:cut], rendered[cut:], start


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def scale_token_ids(tokenizer, instrument: Instrument) -> list[int]:
    """Token id of each scale point's answer (digit or answer character), in scale order; each must be exactly
    one token, also when a newline follows, and no two points may share one."""
    out = []
    for point, answer in zip(instrument.scale.points, instrument.scale.answer_symbols):
        ids = _ids(tokenizer, answer)
        if len(ids) != 1 or _ids(tokenizer, f"{answer}\nx")[0] != ids[0]:
            raise CareError(f"instrument {instrument.name}: the tokenizer does not encode the answer {answer!r} of "
                            f"scale point {point} as one token followed by a newline; give scale.answers that it does")
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise CareError(f"instrument {instrument.name}: two scale answers are the same token for this tokenizer")
    return out


@dataclass
class EncodedSession:
    """Token ids of one session's shared transcript prefix and of each item's suffix."""

    session_id: str
    prefix: list[int]
    items: dict[str, list[int]]
    truncated: bool = False


class PromptBuilder:
    """Encodes sessions for one tokenizer and instrument, by `config` (a context of `config.max_length` tokens).

    `config.target_tokens` tokens are kept free after the longest item suffix for the target (score +
    rationale); `config.context_policy` says which turns a transcript too long for the context keeps (module
    docstring).
    """

    def __init__(self, tokenizer, instrument: Instrument, config: PromptConfig):
        from care.model.plain_text import PlainText

        self.tokenizer = tokenizer
        self.plain = PlainText(tokenizer)  # client text never becomes a control token
        self.instrument = instrument
        self.config = config
        self._suffix_cache: dict[str, dict[str, list[int]]] = {}
        self.digit_ids = scale_token_ids(tokenizer, instrument)
        if tokenizer.eos_token_id is None:
            raise CareError("tokenizer has no EOS token")

    def suffixes(self, language: str) -> dict[str, list[int]]:
        if language not in self._suffix_cache:
            self._suffix_cache[language] = {
                item: _ids(self.tokenizer, _render(self.tokenizer, self.instrument.prompt_texts(language), "",
                                                 item_block(self.instrument, item, language), self.config.prompt_date)[1])
                for item in self.instrument.item_ids
            }
        return self._suffix_cache[language]

    def _prefix(self, session: Session, first_turn: int, clip: int = 0, head: int | None = None) -> list[int]:
        texts = self.instrument.prompt_texts(session.language)
        block = item_block(self.instrument, self.instrument.item_ids[0], session.language)
        transcript = render_transcript(session, texts, first_turn, clip, head)
        prefix, _, start = _render(self.tokenizer, texts, transcript, block, self.config.prompt_date)
        return self.plain.encode(prefix, [(start, start + len(transcript))] if start >= 0 else [])

    def encode(self, session: Session) -> EncodedSession:
        """Encode a session; a transcript too long for the context is cut by the context policy."""
        items = self.suffixes(session.language)
        budget = self.config.max_length - max(len(s) for s in items.values()) - self.config.target_tokens
        prefix = self._prefix(session, 0)
        if len(prefix) <= budget:
            return EncodedSession(session.session_id, prefix, items)
        best = self._keep_start_end(session, budget) if self.config.context_policy == "keep_start_end" else None
        if best is None:
            best = self._keep_end(session, budget)
        return EncodedSession(session.session_id, best, items, truncated=True)

    def _tail(self, session: Session, budget: int, lo: int, head: int | None = None) -> list[int] | None:
        """The prefix with the smallest first tail turn >= `lo` that fits `budget` (None: not even the last)."""
        hi, best = len(session.turns) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = self._prefix(session, mid, head=head)
            if len(candidate) <= budget:
                best, hi = candidate, mid - 1
            else:
                lo = mid + 1
        return best

    def _keep_end(self, session: Session, budget: int) -> list[int]:
        best = self._tail(session, budget, 1)
        if best is None:  # even the last turn alone is too long: cut that turn from its start
            last, text_len = len(session.turns) - 1, len(session.turns[-1].text)
            lo, hi = 0, text_len
            while lo < hi:
                mid = (lo + hi) // 2
                if len(self._prefix(session, last, mid)) <= budget:
                    hi = mid
                else:
                    lo = mid + 1
            best = self._prefix(session, last, lo)
            if len(best) > budget:
                raise CareError(f"session={session.session_id}: max_length {self.config.max_length} leaves no room for the transcript")
        return best

    def _keep_start_end(self, session: Session, budget: int) -> list[int] | None:
        """The opening (context line and first turns, within half the transcript's room) and the longest end
        that fits after it; None when no end turn fits beside the opening (then keep_end applies)."""
        n = len(session.turns)
        bare = len(self._prefix(session, n, head=0))  # instruction, context line and the gap mark, no turns
        if bare > budget:
            return None
        half = bare + (budget - bare) // 2
        lo, hi, head = 1, n - 2, 0  # the largest head within half the room, leaving a turn to drop and one to keep
        while lo <= hi:
            mid = (lo + hi) // 2
            if len(self._prefix(session, n, head=mid)) <= half:
                head, lo = mid, mid + 1
            else:
                hi = mid - 1
        return self._tail(session, budget, head + 1, head)

    def target(self, score: int, rationale: str | None) -> tuple[list[int], bool]:
        """Target ids (answer, [newline + rationale], EOS) and whether the rationale was clipped to fit."""
        answer = self.instrument.scale.answer(score)
        text = answer if rationale is None else f"{answer}\n{rationale.strip()}"
        ids = self.plain.encode(text, [(len(f"{answer}\n"), len(text))] if rationale is not None else [])
        if ids[0] != self.digit_ids[self.instrument.scale.points.index(score)]:
            raise CareError("the score's answer token does not start the target tokens")
        clipped = len(ids) + 1 > self.config.target_tokens
        ids = ids[: self.config.target_tokens - 1] + [self.tokenizer.eos_token_id]
        return ids, clipped


@dataclass
class Example:
    """One (session, item) training example: prompt tokens are masked out of the loss."""

    session_id: str
    item_id: str
    input_ids: list[int]
    labels: list[int]


@dataclass
class ExampleStats:
    sessions: int = 0
    examples: int = 0
    truncated_sessions: int = 0
    score_only_fallback_sessions: int = 0  # rationale targets asked for, but the session has none
    clipped_targets: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


def build_examples(sessions: list[Session], builder: PromptBuilder, targets: str) -> tuple[list[Example], ExampleStats]:
    """One example per (session, item); `targets` is 'rationale' or 'score_only'."""
    if targets not in ("rationale", "score_only"):
        raise CareError(f"unknown train.targets {targets!r}")
    stats = ExampleStats()
    examples = []
    for session in sessions:
        if session.client_ratings is None:
            raise CareError(f"session={session.session_id} field=client_ratings: needed for training")
        enc = builder.encode(session)
        stats.sessions += 1
        stats.truncated_sessions += enc.truncated
        use_rationale = targets == "rationale" and bool(session.rationales)
        if targets == "rationale" and not use_rationale:
            stats.score_only_fallback_sessions += 1
        for item_id in builder.instrument.item_ids:
            rationale = session.rationales.get(item_id) if use_rationale else None
            target, clipped = builder.target(session.client_ratings[item_id], rationale)
            stats.clipped_targets += clipped
            prompt = enc.prefix + enc.items[item_id]
            examples.append(Example(session.session_id, item_id, prompt + target, [IGNORE_INDEX] * len(prompt) + target))
            stats.examples += 1
    return examples, stats
