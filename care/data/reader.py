"""Read a JSONL annotation file, reporting every structural problem with file, line, session and field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from care.errors import CareError, Problem, label
from care.data.schema import Session


@dataclass
class ParsedFile:
    """Sessions that parsed (with their 1-based line numbers) and the problems of those that did not."""

    path: Path
    sessions: list[Session] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_lines: int = 0  # non-blank lines read


def _session_id_of(obj: object) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("session_id"), str):
        return label(obj["session_id"], 80)
    return "?"


def _field_of(loc: tuple) -> str:
    """A pydantic error location as a field path: ``turns[3].speaker``, ``client_ratings.7``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + label(str(part), 40)
    return out or "<line>"


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogate(obj: object) -> str | None:
    """The field path of the first key or string holding a lone surrogate (a `\\ud800` escape without its
    pair), or None. Such text cannot be encoded as UTF-8: tokenizers, pandas and every writer reject it."""
    stack: list[tuple[object, tuple]] = [(obj, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str):
            if _has_surrogate(value):
                return _field_of(loc)
        elif isinstance(value, dict):
            for k, v in value.items():
                if _has_surrogate(k):
                    return _field_of(loc + (k,))
                stack.append((v, loc + (k,)))
        elif isinstance(value, list):
            stack.extend((v, loc + (i,)) for i, v in enumerate(value))
    return None


class _DuplicateKey(ValueError):
    def __init__(self, position: int):
        super().__init__(position)
        self.position = position


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """`json.loads` hook: an object whose key repeats is refused (its 1-based position, never the key's text)."""
    seen: set[str] = set()
    for k, (key, _) in enumerate(pairs, start=1):
        if key in seen:
            raise _DuplicateKey(k)
        seen.add(key)
    return dict(pairs)


def read_jsonl(path: str | Path) -> ParsedFile:
    """Parse every line of `path` into a Session.

    Raises CareError (one line) when the file is missing, not UTF-8 or empty. Problems on single lines
    (malformed JSON, wrong types, unknown fields) are collected in the result, never raised one by one.
    """
    path = Path(path)
    if not path.exists():
        raise CareError(f"{path}: no such file")
    if not path.is_file():
        raise CareError(f"{path}: not a file")
    return parse_jsonl(path.read_bytes(), path)


def parse_jsonl(raw: bytes, path: str | Path) -> ParsedFile:
    """`read_jsonl` on bytes already read (`path` names them in problems), e.g. bytes whose sha256 was checked."""
    path = Path(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CareError(f"{path}:{line}: file is not UTF-8 (byte offset {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise CareError(f"{path}: file is empty")
    out = ParsedFile(path=path)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        out.n_lines += 1
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as exc:
            out.problems.append(Problem(lineno, "?", "<json>", f"duplicate JSON key (key {exc.position} of an "
                                        "object repeats an earlier one; which value counts is ambiguous)", str(path)))
            continue
        except json.JSONDecodeError as exc:
            out.problems.append(Problem(lineno, "?", "<json>", f"malformed JSON: {exc.msg} (column {exc.colno})", str(path)))
            continue
        except RecursionError:
            out.problems.append(Problem(lineno, "?", "<json>", "JSON nested too deeply", str(path)))
            continue
        except ValueError:  # an integer literal over Python's digit limit (sys.get_int_max_str_digits)
            out.problems.append(Problem(lineno, "?", "<json>", "malformed JSON: number too long", str(path)))
            continue
        bad = _lone_surrogate(obj) if "\\u" in line else None
        if bad is not None:
            out.problems.append(Problem(lineno, _session_id_of(obj), bad,
                                        "not valid Unicode: a \\u escape encodes a lone surrogate", str(path)))
            continue
        sid = _session_id_of(obj)
        if not isinstance(obj, dict):
            out.problems.append(Problem(lineno, sid, "<line>", f"expected a JSON object, got {type(obj).__name__}", str(path)))
            continue
        try:
            session = Session.model_validate(obj)
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown field"
                out.problems.append(Problem(lineno, sid, _field_of(err["loc"]), msg, str(path)))
            continue
        except RecursionError:
            out.problems.append(Problem(lineno, sid, "<line>", "JSON nested too deeply", str(path)))
            continue
        out.sessions.append(session)
        out.lines.append(lineno)
    return out
