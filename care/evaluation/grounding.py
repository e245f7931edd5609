"""Grounded quotes: decoding that keeps every quotation in a rationale a verbatim span of the transcript.

Quotes follow the quote marks of the session's language (`care/data/prompts/*.yaml` `quotes`, via the
instrument's prompt texts). One parse rule holds everywhere (`find_quotes`): outside a quotation an opening
mark opens one, and the first closing mark of that pair after it closes it; the text between is the quote.
During decoding (`QuoteGuide`), inside a quotation a token is allowed only when the bytes it adds keep the
quote a contiguous substring of one transcript turn's text, on whole characters (never starting or ending
inside a multi-byte character), and the closing mark only after a non-empty quote; outside quotes the model
writes freely. So every closed quote of a guided rationale is found verbatim in a turn: grounding 1.0 by
construction (tests/test_grounding.py proves it on random transcripts and adversarial logits).

It works on bytes, as a byte-level BPE vocabulary does (`TokenBytes`; tokens may split a character, and
one token may hold an opening mark and the quote's first characters, or the quote's end, the closing mark
and more text). The transcript's turns are indexed by a suffix automaton over their UTF-8 bytes (`_Sam`);
a step first checks the model's own top tokens and only when none is allowed walks the vocabulary's sorted
byte strings jointly with the automaton, visiting only the branches that continue a transcript span, never
the whole vocabulary. Nothing here logs or stores transcript text.
"""

from __future__ import annotations

import codecs
import json
import weakref
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from care.errors import CareError

QuotePairs = Sequence[tuple[str, str]]

_SEP = 0xFF  # never a byte of UTF-8 text: separates turns in the automaton, and has no transition
_TOP_K = 16  # the model's best tokens checked one by one before the allowed set is computed
_PRE, _FREE, _QUOTE = 0, 1, 2  # before the first newline (the score line), free text, inside a quotation


# ------------------------------------------------------------------------------------------ the parse rule


def find_quotes(text: str, pairs: QuotePairs) -> list[tuple[int, int]]:
    """(start, end) character offsets in `text` of every closed, non-empty quotation (marks excluded).

    Outside a quotation the first pair whose opening mark is the character opens; the first closing mark
    of that pair ends it. An unclosed quotation at the end is not a quote.
    """
    opens: dict[str, str] = {}
    for o, c in pairs:
        opens.setdefault(o, c)
    out, close, start = [], None, 0
    for i, ch in enumerate(text):
        if close is None:
            if ch in opens:
                close, start = opens[ch], i + 1
        elif ch == close:
            if i > start:
                out.append((start, i))
            close = None
    return out


def locate(span: str, turns: Sequence[str]) -> dict[str, int] | None:
    """Where `span` first occurs verbatim in one turn: {turn, start, end} (character offsets), or None."""
    for t, text in enumerate(turns):
        at = text.find(span)
        if at >= 0:
            return {"turn": t, "start": at, "end": at + len(span)}
    return None


def locate_quotes(text: str, turns: Sequence[str], pairs: QuotePairs) -> list[dict[str, int]]:
    """The quotations of `text` found verbatim in a turn, in order, as {turn, start, end}; others are left out."""
    found = (locate(text[s:e], turns) for s, e in find_quotes(text, pairs))
    return [q for q in found if q is not None]


def single_char_marks(pairs: QuotePairs, language: str) -> list[tuple[str, str]]:
    """The pairs, refused unless every mark is one character (what guided decoding handles)."""
    for o, c in pairs:
        if len(o) != 1 or len(c) != 1:
            raise CareError(f"grounded quotes: the quote marks of language {language!r} must be single characters "
                            f"(got {o!r} {c!r}); change them in the prompt wording, or set eval.grounded_quotes: "
                            "false (care score: --free-quotes)")
    return [(o, c) for o, c in pairs]


# ------------------------------------------------------------------------------------ the token byte table


def _gpt2_byte_decoder() -> dict[str, int]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CareError("grounded quotes need a fast (`tokenizers`) tokenizer")
    return backend


class TokenBytes:
    """Every token's bytes as decoding writes them (special tokens: none), for a byte-level BPE tokenizer.

    Tokens are also kept sorted by their bytes: a range of that order is a node of the vocabulary's byte
    trie, which `QuoteGuide` walks jointly with the transcript automaton.
    """

    def __init__(self, tokenizer):
        backend = _backend(tokenizer)
        decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
        if decoder.get("type") == "Sequence" and len(decoder.get("decoders", [])) == 1:
            decoder = decoder["decoders"][0]
        if decoder.get("type") != "ByteLevel":
            raise CareError("grounded quotes need a byte-level BPE tokenizer (its decoder is "
                            f"{decoder.get('type', 'none')}); set eval.grounded_quotes: false (care score: --free-quotes)")
        table = _gpt2_byte_decoder()
        size = backend.get_vocab_size(with_added_tokens=True)
        special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        self.bytes: list[bytes | None] = [None] * size
        for token, i in backend.get_vocab(with_added_tokens=True).items():
            if i in special or i >= size:
                continue
            # as the ByteLevel decoder does: mapped bytes, or the raw text of a token outside the byte alphabet
            self.bytes[i] = bytes(table[c] for c in token) if all(c in table for c in token) else token.encode("utf-8")
        self.special = np.array(sorted(special), dtype=np.int64)
        singles = {b for b in self.bytes if b is not None and len(b) == 1}
        if len(singles) != 256:
            raise CareError(f"grounded quotes need a token for every byte; this vocabulary has {len(singles)} of 256")
        ordered = sorted((b, i) for i, b in enumerate(self.bytes) if b)
        self.keys = [b for b, _ in ordered]
        self.ids = [i for _, i in ordered]
        self.vocab = size
        self._holding: dict[frozenset[int], np.ndarray] = {}

    def holding(self, last_bytes: frozenset[int]) -> np.ndarray:
        """Ids of the tokens holding any of these bytes (the only ones that can open a quotation)."""
        if last_bytes not in self._holding:
            self._holding[last_bytes] = np.array(
                [i for i, b in enumerate(self.bytes) if b and not last_bytes.isdisjoint(b)], dtype=np.int64)
        return self._holding[last_bytes]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (special tokens skipped), invalid UTF-8 replaced as the ByteLevel decoder does."""
        return b"".join(self.bytes[i] or b"" for i in ids).decode("utf-8", "replace")


_TABLES: "weakref.WeakKeyDictionary[Any, TokenBytes]" = weakref.WeakKeyDictionary()


def token_bytes(tokenizer) -> TokenBytes:
    """The byte table of `tokenizer`, built once per tokenizer object."""
    try:
        return _TABLES[tokenizer]
    except KeyError:
        table = _TABLES[tokenizer] = TokenBytes(tokenizer)
        return table
    except TypeError:  # not weak-referenceable
        return TokenBytes(tokenizer)


# --------------------------------------------------------------------------- the transcript's automaton


class _Sam:
    """A suffix automaton over the turns' UTF-8 bytes: a walk from the root succeeds exactly on the byte
    strings that occur inside one turn (turns are joined by a separator that has no transition)."""

    def __init__(self, turns: Sequence[str]):
        data = bytes([_SEP]).join(t.encode("utf-8") for t in turns)
        nxt: list[dict[int, int]] = [{}]
        link, length, last = [-1], [0], 0
        for c in data:
            cur = len(nxt)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and c not in nxt[p]:
                nxt[p][c] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][c]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(nxt)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(c) == q:
                        nxt[p][c] = clone
                        p = link[p]
                    link[q] = link[cur] = clone
            last = cur
        for edges in nxt:
            edges.pop(_SEP, None)
        self.next = nxt

    def walk(self, state: int, data: bytes) -> int | None:
        for b in data:
            state = self.next[state].get(b)
            if state is None:
                return None
        return state

    def completes(self, state: int, k: int, avoid: bytes) -> bool:
        """Some k-byte walk from `state` exists other than the bytes `avoid` (k long)."""
        if k == 0:
            return False
        for b, s in self.next[state].items():
            if (self.completes(s, k - 1, avoid[1:]) if b == avoid[0] else self._reaches(s, k - 1)):
                return True
        return False

    def _reaches(self, state: int, k: int) -> bool:
        return k == 0 or any(self._reaches(s, k - 1) for s in self.next[state].values())


def _char_len(lead: int) -> int:
    """Bytes of the UTF-8 character this byte starts; 0 when it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _children(keys: list[bytes], lo: int, hi: int, d: int, candidates: list[int] | None):
    """The trie node keys[lo:hi] (a common prefix of length d)'s children: (byte, lo, hi), for the candidate
    bytes (None: every byte present)."""
    prefix = keys[lo][:d]
    if candidates is None:
        i = lo
        while i < hi:
            b = keys[i][d]
            j = hi if b == 255 else bisect_left(keys, prefix + bytes([b + 1]), i, hi)
            yield b, i, j
            i = j
        return
    for b in candidates:
        i = bisect_left(keys, prefix + bytes([b]), lo, hi)
        j = hi if b == 255 else bisect_left(keys, prefix + bytes([b + 1]), i, hi)
        if i < j:
            yield b, i, j


# ---------------------------------------------------------------------------------------------- decoding


class TranscriptIndex:
    """One session's transcript turns and quote marks, ready for guided decoding (shared by its items)."""

    def __init__(self, turns: Sequence[str], pairs: QuotePairs, table: TokenBytes, language: str = "?"):
        pairs = single_char_marks(pairs, language)
        self.table = table
        self.sam = _Sam(turns)
        self.opens: dict[str, int] = {}
        for k, (o, _) in enumerate(pairs):
            self.opens.setdefault(o, k)
        self.closes = [c.encode("utf-8") for _, c in pairs]
        chars = {ch for t in turns for ch in t}
        # a quotation may open only where a non-empty quote can follow
        self.openable = [bool(chars - {c}) for _, c in pairs]
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._risky = table.holding(frozenset(o.encode("utf-8")[-1] for o in self.opens))
        self._allowed: dict[tuple, np.ndarray] = {}

    # one byte ---------------------------------------------------------------------------------------
    def step(self, state: tuple, b: int) -> tuple | None:
        """The state after byte `b`, or None when no closed grounded quote can follow any more."""
        kind = state[0]
        if kind == _PRE:
            return (_FREE, b"") if b == 0x0A else state
        if kind == _FREE:
            buf = state[1]
            if not buf and b < 0x80:
                ch = chr(b)
            else:
                self._decoder.setstate((buf, 0))
                out = self._decoder.decode(bytes([b]))
                buf = self._decoder.getstate()[0]
                ch = out[-1:] if not buf else ""
            k = self.opens.get(ch) if ch else None
            if k is None:
                return (_FREE, buf)
            return (_QUOTE, k, 0, False, b"") if self.openable[k] else None
        _, k, q, has, pend = state
        close = self.closes[k]
        if not pend and 0x80 <= b < 0xC0:
            return None
        p2 = pend + bytes([b])
        need = _char_len(p2[0])
        if need == 0:
            return None
        if len(p2) == need:
            if p2 == close:
                return (_FREE, b"") if has else None
            q2 = self.sam.walk(q, p2)
            return None if q2 is None else (_QUOTE, k, q2, True, b"")
        closing = close.startswith(p2)
        q2 = self.sam.walk(q, p2)
        if q2 is not None and (not closing or self.sam.completes(q2, need - len(p2), close[len(p2):])):
            return (_QUOTE, k, q, has, p2)
        return (_QUOTE, k, q, has, p2) if closing and has else None

    def advance(self, state: tuple, token: int) -> tuple | None:
        """The state after a token; special tokens add no text and are refused inside a quotation."""
        data = self.table.bytes[token] if 0 <= token < self.table.vocab else None
        if data is None:
            return None if state[0] == _QUOTE else state
        for b in data:
            state = self.step(state, b)
            if state is None:
                return None
        return state

    # the allowed set ---------------------------------------------------------------------------------
    def _next_bytes(self, state: tuple) -> list[int] | None:
        if state[0] != _QUOTE:
            return None
        _, k, q, _, pend = state
        close = self.closes[k]
        node = self.sam.walk(q, pend)
        out = set(self.sam.next[node]) if node is not None else set()
        if close.startswith(pend) and len(close) > len(pend):
            out.add(close[len(pend)])
        return sorted(out)

    def allowed(self, state: tuple) -> np.ndarray:
        """Every token allowed in `state` (sorted ids): the vocabulary trie walked jointly with the automaton."""
        hit = self._allowed.get(state)
        if hit is not None:
            return hit
        if state[0] != _QUOTE:  # free text: every token but those that would open a quotation wrongly
            bad = [t for t in self._risky if self.advance(state, int(t)) is None]
            ok = np.ones(self.table.vocab, dtype=bool)
            ok[bad] = False
            result = np.flatnonzero(ok)
        else:
            keys, ids, found = self.table.keys, self.table.ids, []
            stack = [(0, len(keys), 0, state)]
            while stack:
                lo, hi, d, s = stack.pop()
                while lo < hi and len(keys[lo]) == d:
                    found.append(ids[lo])
                    lo += 1
                if lo >= hi:
                    continue
                for b, l2, h2 in _children(keys, lo, hi, d, self._next_bytes(s)):
                    s2 = self.step(s, b)
                    if s2 is not None:
                        stack.append((l2, h2, d + 1, s2))
            result = np.array(sorted(found), dtype=np.int64)
        if len(self._allowed) < 4096:
            self._allowed[state] = result
        return result


@dataclass
class QuoteGuide:
    """Greedy decoding of one generated text under the quote constraint (one per item being decoded)."""

    index: TranscriptIndex
    state: tuple = (_PRE,)

    def choose(self, logits: np.ndarray, last: bool = False) -> int:
        """The best allowed token for these logits (float, vocab-sized), and the state moves past it.

        `last`: the final token of the budget; a token that leaves the text outside a quotation is
        preferred, so a quote is not left open when there is a way to close it.
        """
        logits = np.asarray(logits)[: self.index.table.vocab]
        def fits(s):
            return s is not None and not (last and s[0] == _QUOTE)

        top = int(np.argmax(logits))
        s = self.index.advance(self.state, top)
        if fits(s):
            self.state = s
            return top
        k = min(_TOP_K, logits.shape[0] - 1)
        cand = np.argpartition(-logits, k)[:k]
        for t in cand[np.lexsort((cand, -logits[cand]))]:
            s = self.index.advance(self.state, int(t))
            if fits(s):
                self.state = s
                return int(t)
        allowed = self.index.allowed(self.state)
        if last:
            closing = [t for t in allowed if self.index.advance(self.state, int(t))[0] != _QUOTE]
            allowed = np.asarray(closing, dtype=np.int64) if closing else allowed
        if not len(allowed):  # cannot happen: every state reached has a way to a closed, grounded quote
            raise CareError("grounded quotes: no token is allowed (internal error)")
        t = int(allowed[np.argmax(logits[allowed])])
        self.state = self.index.advance(self.state, t)
        return t

    @property
    def in_quote(self) -> bool:
        return self.state[0] == _QUOTE
