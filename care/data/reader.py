"""Read a JSONL annotation file, reporting every structural problem with file, line, session and field."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

from pydantic import ValidationError

from care.data import strict_json
from care.errors import CareError, Problem, label
from care.data.schema import Session, Turn
from care.params import DataLimits


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


MAPPINGS = ("client_ratings", "counselor_ratings", "rationales", "helper_ratings")  # keyed by item id
_FIELDS = {"session": set(Session.model_fields), "turn": set(Turn.model_fields)}


def key_label(key: str, position: int, known: Collection[str] = ()) -> str:
    """A key taken from the input as a message may show it: verbatim when it is a known item id, else its
    1-based position in its object (`key#3`): unknown keys can hold any text, even a client's words."""
    return key if key in known else f"key#{position}"


def _position(container: object, key: str) -> int:
    if isinstance(container, dict):
        for i, k in enumerate(container, start=1):
            if k == key:
                return i
    return 0


def _field_of(loc: tuple, obj: object = None, known: Collection[str] = ()) -> str:
    """A location in a line's object as a field path: ``turns[3].speaker``, ``client_ratings.7``,
    ``client_ratings.key#13``. Schema field names and known item ids are shown; any other key by position."""
    out, level, node = "", "session", obj
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            level = "turn" if level == "turns" else None
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        part = str(part)
        if level in _FIELDS and part in _FIELDS[level]:
            shown = part
            level = part if part in ("turns", *MAPPINGS) else None
        elif level in MAPPINGS:
            shown, level = key_label(part, _position(node, part), known), None
        else:
            shown, level = key_label(part, _position(node, part)), None
        out += ("." if out else "") + shown
        node = node.get(part) if isinstance(node, dict) else None
    return out or "<line>"


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _lone_surrogate(obj: object, known: Collection[str] = ()) -> str | None:
    """The field path of the first key or string holding a lone surrogate (a `\\ud800` escape without its
    pair), or None. Such text cannot be encoded as UTF-8: tokenizers, pandas and every writer reject it."""
    stack: list[tuple[object, tuple]] = [(obj, ())]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, str):
            if _has_surrogate(value):
                return _field_of(loc, obj, known)
        elif isinstance(value, dict):
            for k, v in value.items():
                if _has_surrogate(k):
                    return _field_of(loc + (k,), obj, known)
                stack.append((v, loc + (k,)))
        elif isinstance(value, list):
            stack.extend((v, loc + (i,)) for i, v in enumerate(value))
    return None


def read_limited(path: str | Path, limits: DataLimits | None = None) -> bytes:
    """The bytes of a regular file, refused (one line) before reading when it is over data.limits.max_file_mb."""
    from care.fsutil import open_regular

    path, limits = Path(path), limits or DataLimits()
    if not path.exists():
        raise CareError(f"{path}: no such file")
    try:
        fd = open_regular(path)
    except CareError:
        raise CareError(f"{path}: not a file") from None
    except OSError as exc:
        raise CareError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.file_bytes:
            raise CareError(f"{path}: {size} bytes, over the limit of {limits.file_bytes} "
                            "(data.limits.max_file_mb in params)")
        raw = fh.read(limits.file_bytes + 1)
    if len(raw) > limits.file_bytes:
        raise CareError(f"{path}: grew over the limit of {limits.file_bytes} bytes while it was read")
    return raw


def read_jsonl(path: str | Path, limits: DataLimits | None = None, known_keys: Collection[str] = ()) -> ParsedFile:
    """Parse every line of `path` into a Session.

    Raises CareError (one line) when the file is missing, not UTF-8, empty or over the size limit. Problems on
    single lines (malformed JSON, wrong types, unknown fields, over a limit) are collected in the result, never
    raised one by one. `known_keys` (the instrument's item ids) are shown in problems; other keys by position.
    """
    path = Path(path)
    return parse_jsonl(read_limited(path, limits), path, limits, known_keys)


def _over(n: int, limit: int, unit: str, key: str) -> str:
    return f"{n} {unit}, over the limit of {limit} (data.limits.{key} in params)"


def size_problems(obj: dict, limits: DataLimits, known: Collection[str] = ()) -> list[tuple[str, str]]:
    """(field, message) for each part of a line's object over the limits: turns, text lengths, mapping keys."""
    out: list[tuple[str, str]] = []
    turns = obj.get("turns")
    if isinstance(turns, list):
        if len(turns) > limits.max_turns:
            out.append(("turns", _over(len(turns), limits.max_turns, "turns", "max_turns")))
        for i, turn in enumerate(turns[: limits.max_turns]):
            text = turn.get("text") if isinstance(turn, dict) else None
            if isinstance(text, str) and len(text) > limits.max_text_chars:
                out.append((f"turns[{i}].text", _over(len(text), limits.max_text_chars, "characters", "max_text_chars")))
    context = obj.get("context")
    if isinstance(context, str) and len(context) > limits.max_text_chars:
        out.append(("context", _over(len(context), limits.max_text_chars, "characters", "max_text_chars")))
    for name in MAPPINGS:
        mapping = obj.get(name)
        if not isinstance(mapping, dict):
            continue
        if len(mapping) > limits.max_keys:
            out.append((name, _over(len(mapping), limits.max_keys, "keys", "max_keys")))
            continue
        for i, (key, value) in enumerate(mapping.items(), start=1):
            if isinstance(value, str) and len(value) > limits.max_text_chars:
                out.append((f"{name}.{key_label(key, i, known)}",
                            _over(len(value), limits.max_text_chars, "characters", "max_text_chars")))
    return out


def parse_jsonl(raw: bytes, path: str | Path, limits: DataLimits | None = None,
                known_keys: Collection[str] = ()) -> ParsedFile:
    """`read_jsonl` on bytes already read (`path` names them in problems), e.g. bytes whose sha256 was checked."""
    path, limits = Path(path), limits or DataLimits()
    if len(raw) > limits.file_bytes:
        raise CareError(f"{path}: {len(raw)} bytes, over the limit of {limits.file_bytes} (data.limits.max_file_mb in params)")
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
    line_bytes = limits.line_bytes
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        out.n_lines += 1
        if len(line) > line_bytes // 4 and len(line.encode("utf-8", "surrogatepass")) > line_bytes:
            out.problems.append(Problem(lineno, "?", "<line>", _over(len(line.encode("utf-8", "surrogatepass")),
                                                                     line_bytes, "bytes", "max_line_kb"), str(path)))
            continue
        try:
            obj = strict_json.loads(line)
        except strict_json.JsonProblem as exc:  # NaN, a number too long or too large, a repeated key
            where = _field_of(exc.loc, exc.data, known_keys) if exc.loc else "<json>"
            out.problems.append(Problem(lineno, _session_id_of(exc.data), where, exc.message, str(path)))
            continue
        except json.JSONDecodeError as exc:
            out.problems.append(Problem(lineno, "?", "<json>", f"malformed JSON: {exc.msg} (column {exc.colno})", str(path)))
            continue
        except RecursionError:
            out.problems.append(Problem(lineno, "?", "<json>", "JSON nested too deeply", str(path)))
            continue
        bad = _lone_surrogate(obj, known_keys) if "\\u" in line else None
        if bad is not None:
            out.problems.append(Problem(lineno, _session_id_of(obj), bad,
                                        "not valid Unicode: a \\u escape encodes a lone surrogate", str(path)))
            continue
        sid = _session_id_of(obj)
        if not isinstance(obj, dict):
            out.problems.append(Problem(lineno, sid, "<line>", f"expected a JSON object, got {type(obj).__name__}", str(path)))
            continue
        oversized = size_problems(obj, limits, known_keys)
        if oversized:
            out.problems += [Problem(lineno, sid, fld, msg, str(path)) for fld, msg in oversized]
            continue
        try:
            session = Session.model_validate(obj)
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown field (its name is not shown)"
                out.problems.append(Problem(lineno, sid, _field_of(err["loc"], obj, known_keys), msg, str(path)))
            continue
        except RecursionError:
            out.problems.append(Problem(lineno, sid, "<line>", "JSON nested too deeply", str(path)))
            continue
        out.sessions.append(session)
        out.lines.append(lineno)
    return out
