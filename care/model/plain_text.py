"""Client text is encoded as plain text, never as control tokens.

A transcript, context or rationale may contain text that looks like the tokenizer's added tokens
(`<|eot_id|>`, `<|im_start|>`, `<tool_call>`, the tiny preset's `<|end|>` ...). Tokenized with the rest of the
prompt, such text would become the control token itself and could end the user turn, open a fake assistant
turn or stop generation. `PlainText.encode(text, spans)` tokenizes `text` exactly as the tokenizer does,
except that inside `spans` (character ranges holding client text) no added token is ever produced.

Clean text (no added token inside a span) takes one ordinary encode, so its ids are exactly the tokenizer's.
Otherwise the text is split at the template's own added tokens (outside the spans), which are kept, and the
pieces between them are encoded by a copy of the tokenizer without added tokens: the look-alikes become the
ordinary tokens of their characters. Pieces split at added tokens are what the tokenizer encodes separately
anyway, so nothing else changes.
"""

from __future__ import annotations

import json
from typing import Sequence

from care.errors import CareError


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start < b and end > a for a, b in spans)


class PlainText:
    """Encodes prompts for one (fast) tokenizer with client text kept plain."""

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise CareError("prompts need a fast tokenizer (tokenizer.json): a slow one cannot keep client text "
                            "from being read as control tokens")
        self.backend = backend
        self.added = dict(backend.get_added_tokens_decoder())  # id -> AddedToken
        self._plain = None

    @property
    def plain(self):
        """The same tokenizer without added tokens (built on first need)."""
        if self._plain is None:
            from tokenizers import Tokenizer

            spec = json.loads(self.backend.to_str())
            spec["added_tokens"] = []
            self._plain = Tokenizer.from_str(json.dumps(spec))
        return self._plain

    def _plain_ids(self, piece: str) -> list[int]:
        ids = self.plain.encode(piece, add_special_tokens=False).ids
        if any(i in self.added for i in ids):
            raise CareError("the tokenizer's vocabulary encodes client text as one of its control tokens even "
                            "without added-token matching; refusing to build the prompt")
        return ids

    def encode(self, text: str, spans: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Token ids of `text` (no BOS/EOS added); inside `spans` no added token is produced."""
        enc = self.backend.encode(text, add_special_tokens=False)
        hits = [(tid, off) for tid, off in zip(enc.ids, enc.offsets) if tid in self.added]
        if not spans or not any(_overlaps(s, e, spans) for _, (s, e) in hits):
            return list(enc.ids)
        out: list[int] = []
        pos = 0
        for tid, (start, end) in hits:
            if _overlaps(start, end, spans):
                continue  # a look-alike in client text: encoded with its piece, as plain text
            token = self.added[tid]
            piece = text[pos:start]
            if getattr(token, "lstrip", False):
                piece = piece.rstrip()
            if piece:
                out += self._plain_ids(piece)
            out.append(tid)
            pos = end
            if getattr(token, "rstrip", False):
                while pos < len(text) and text[pos].isspace():
                    pos += 1
        if pos < len(text):
            out += self._plain_ids(text[pos:])
        return out
