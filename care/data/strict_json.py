"""The one JSON parser for what users give (annotation lines, imported records, ESConv files, score files).

Python's `json` accepts what JSON does not (NaN, Infinity), turns 1e999 into infinity, keeps the last of a
repeated key without a word, and raises a bare ValueError (no line, no field) for an integer over
`sys.get_int_max_str_digits()` digits. `loads` refuses each of these as a `JsonProblem` that carries the path to
the value (the place, never the value), so a caller reports it as a located problem like any other.
"""

from __future__ import annotations

import json
import math
from typing import Any, Collection

MAX_DIGITS = 600  # under Python's own limit whatever it is set to (its smallest setting is 640)


class JsonProblem(ValueError):
    """A JSON text that parses but breaks a rule. `loc`: the path (keys and indices) to the value, () for the
    whole text; `data`: what was parsed, the offending value replaced by a marker (for ids around it)."""

    def __init__(self, message: str, loc: tuple, data: Any):
        super().__init__(message)
        self.message, self.loc, self.data = message, loc, data


class _Bad:
    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _first_bad(data: Any) -> tuple[tuple, _Bad] | None:
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, _Bad):
            return loc, value
        if isinstance(value, dict):
            stack.extend((v, loc + (k,)) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, loc + (i,)) for i, v in reversed(list(enumerate(value))))
    return None


def loads(text: str) -> Any:
    """`text` parsed strictly. Raises json.JSONDecodeError (malformed), RecursionError (nested too deeply) and
    JsonProblem: NaN or Infinity, a number outside the float range or of more than MAX_DIGITS digits, an object
    whose key repeats (named by its position: keys can hold any text)."""
    bad: list[_Bad] = []

    def mark(message: str) -> _Bad:
        bad.append(_Bad(message))
        return bad[-1]

    def integer(digits: str) -> int | _Bad:
        if len(digits) > MAX_DIGITS:
            return mark(f"number of {len(digits.lstrip('-'))} digits, over the limit of {MAX_DIGITS}")
        return int(digits)

    def real(literal: str) -> float | _Bad:
        value = float(literal)
        return value if math.isfinite(value) else mark("number outside the range of a float")

    def constant(name: str) -> _Bad:
        return mark(f"{name} is not JSON")

    def unique(pairs: list[tuple[str, Any]]) -> dict | _Bad:
        seen: set[str] = set()
        for k, (key, _) in enumerate(pairs, start=1):
            if key in seen:
                return mark(f"duplicate JSON key (key {k} of an object repeats an earlier one; which value counts "
                            "is ambiguous)")
            seen.add(key)
        return dict(pairs)

    data = json.loads(text, parse_int=integer, parse_float=real, parse_constant=constant, object_pairs_hook=unique)
    if bad:
        loc, found = _first_bad(data) or ((), bad[0])
        raise JsonProblem(found.message, loc, data)
    return data


def path_label(loc: tuple, data: Any, known: Collection[str] = ()) -> str:
    """`loc` as a field path (`dialog[3].content`), a key shown only when it is in `known` (the field names
    of the format or the mapping), any other by its position in its object (`key#2`); "<json>" for the root."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        position = 1 + list(node).index(part) if isinstance(node, dict) and part in node else 0
        out += ("." if out else "") + (part if part in known else f"key#{position}")
        node = node.get(part) if isinstance(node, dict) else None
    return out or "<json>"
