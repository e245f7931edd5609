"""Read a JSONL annotation file, reporting every structural problem with file, line, session and field."""

from __future__ import annotations

import codecs
import hashlib
import io
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Collection, Iterator

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


def open_input(path: Path) -> int:
    """An fd for reading the regular file `path`; one-line CareErrors for a missing, odd or unreadable one."""
    from care.fsutil import open_regular

    if not path.exists():
        raise CareError(f"{path}: no such file")
    try:
        return open_regular(path)
    except CareError:
        raise CareError(f"{path}: not a file") from None
    except OSError as exc:
        raise CareError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _over_file_limit(path: Path, size: int, limits: DataLimits) -> CareError:
    return CareError(f"{path}: {size} bytes, over the limit of {limits.file_bytes} (data.limits.max_file_mb in params)")


def read_limited(path: str | Path, limits: DataLimits | None = None) -> bytes:
    """The bytes of a regular file, refused (one line) before reading when it is over data.limits.max_file_mb."""
    path, limits = Path(path), limits or DataLimits()
    with os.fdopen(open_input(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.file_bytes:
            raise _over_file_limit(path, size, limits)
        raw = fh.read(limits.file_bytes + 1)
    if len(raw) > limits.file_bytes:
        raise CareError(f"{path}: grew over the limit of {limits.file_bytes} bytes while it was read")
    return raw


def read_jsonl(path: str | Path, limits: DataLimits | None = None, known_keys: Collection[str] = ()) -> ParsedFile:
    """Parse every line of `path` into a Session (all of them in memory; `JsonlStream` reads one at a time).

    Raises CareError (one line) when the file is missing, not UTF-8, empty or over the size limit. Problems on
    single lines (malformed JSON, wrong types, unknown fields, over a limit) are collected in the result, never
    raised one by one. `known_keys` (the instrument's item ids) are shown in problems; other keys by position.
    """
    return _collect(JsonlStream(path, limits, known_keys))


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
        raise _over_file_limit(path, len(raw), limits)
    return _collect(JsonlStream(path, limits, known_keys, source=io.BytesIO(raw)))


def _collect(stream: "JsonlStream") -> ParsedFile:
    out = ParsedFile(path=stream.path)
    for line in stream:
        if line.session is None:
            out.problems += line.problems
        else:
            out.sessions.append(line.session)
            out.lines.append(line.line)
    out.n_lines = stream.n_lines
    return out


@dataclass
class Line:
    """One non-blank line of a JSONL file: its 1-based number, and its Session or the problems that stop it."""

    line: int
    session: Session | None
    problems: list[Problem]


_CHUNK = 1 << 20  # bytes read at a time from a line over the limit (never held whole)
PROGRESS_MIN_BYTES = 8 << 20  # files from this size get a progress bar (on a terminal)


class JsonlStream:
    """The lines of a JSONL annotation file, read and parsed one at a time: memory holds one line, whatever the
    file's size. Iterating yields a `Line` per non-blank line; afterwards `sha256`, `n_bytes` and `n_lines` describe
    exactly the bytes that were read and parsed.

    File-level problems raise CareError (one line): missing, not a regular file, over data.limits.max_file_mb
    (checked before reading), not UTF-8 (line and byte offset), empty. A line over data.limits.max_line_kb is a
    problem of that line; it is skipped in bounded chunks, never held. `source` reads from an open binary file
    instead of opening `path` (bytes already in memory). `progress`: a bar on stderr (bytes read); None shows
    it for files of PROGRESS_MIN_BYTES or more when stderr is a terminal.
    """

    def __init__(self, path: str | Path, limits: DataLimits | None = None, known_keys: Collection[str] = (), *,
                 source: BinaryIO | None = None, progress: bool | None = False):
        self.path, self.limits, self.known_keys = Path(path), limits or DataLimits(), known_keys
        self._source, self._progress = source, progress
        self.sha256 = ""
        self.n_bytes = 0
        self.n_lines = 0  # non-blank lines read

    def __iter__(self) -> Iterator[Line]:
        if self._source is not None:
            yield from self._lines(self._source, None)
            return
        with os.fdopen(open_input(self.path), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > self.limits.file_bytes:
                raise _over_file_limit(self.path, size, self.limits)
            yield from self._lines(fh, size)

    def _bar(self, size: int | None):
        from tqdm.auto import tqdm

        if self._progress is None:
            disable = None if size is not None and size >= PROGRESS_MIN_BYTES else True  # None: on a terminal only
        else:
            disable = not self._progress
        return tqdm(total=size, desc=f"reading {self.path.name}", unit="B", unit_scale=True, disable=disable,
                    mininterval=1.0, leave=False)

    def _lines(self, fh: BinaryIO, size: int | None) -> Iterator[Line]:
        digest, path, limits = hashlib.sha256(), self.path, self.limits
        cap = limits.line_bytes + 1
        offset = 0
        with self._bar(size) as bar:
            for lineno in itertools.count(1):
                chunk = fh.readline(cap)
                if not chunk:
                    break
                digest.update(chunk)
                offset += len(chunk)
                if offset > limits.file_bytes:
                    raise CareError(f"{path}: grew over the limit of {limits.file_bytes} bytes while it was read")
                if len(chunk) == cap and not chunk.endswith(b"\n"):  # over the line limit: skip it in chunks
                    n, blank, offset = self._skip_long(fh, chunk, digest, offset - len(chunk), lineno)
                    bar.update(n)
                    if blank:
                        continue
                    self.n_lines += 1
                    yield Line(lineno, None, [Problem(lineno, "?", "<line>", _over(n, limits.line_bytes, "bytes",
                                                                                   "max_line_kb"), str(path))])
                    continue
                bar.update(len(chunk))
                raw = chunk[:-1] if chunk.endswith(b"\n") else chunk
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise CareError(f"{path}:{lineno}: file is not UTF-8 (byte offset {offset - len(chunk) + exc.start})"
                                    ) from None
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                if not text.strip():
                    continue
                self.n_lines += 1
                session, problems = parse_line(text, lineno, str(path), limits, self.known_keys)
                yield Line(lineno, session, problems)
        self.sha256, self.n_bytes = digest.hexdigest(), offset
        if not self.n_lines:
            raise CareError(f"{path}: file is empty")

    def _skip_long(self, fh: BinaryIO, first: bytes, digest, start: int, lineno: int) -> tuple[int, bool, int]:
        """Read the rest of a line over the limit in chunks: (its length without the newline, whether it is all
        whitespace, the file offset after it). Its bytes are hashed and checked as UTF-8, never kept."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        n, blank, chunk, offset = 0, True, first, start
        while True:
            end = chunk.endswith(b"\n")
            body = chunk[:-1] if end else chunk
            try:
                text = decoder.decode(body, final=end or not chunk)
            except UnicodeDecodeError as exc:
                raise CareError(f"{self.path}:{lineno}: file is not UTF-8 (byte offset {offset + exc.start})") from None
            if lineno == 1 and n == 0 and text.startswith("\ufeff"):
                text = text[1:]
            blank = blank and not text.strip()
            n += len(body)
            offset += len(chunk)
            if offset > self.limits.file_bytes:
                raise CareError(f"{self.path}: grew over the limit of {self.limits.file_bytes} bytes while it was read")
            if end or not chunk:
                return n, blank, offset
            chunk = fh.readline(_CHUNK)
            digest.update(chunk)


def parse_line(line: str, lineno: int, path: str, limits: DataLimits, known_keys: Collection[str] = ()
               ) -> tuple[Session | None, list[Problem]]:
    """One line's Session, or None and the problems that stop it (JSON, Unicode, size limits, schema)."""
    try:
        obj = strict_json.loads(line)
    except strict_json.JsonProblem as exc:  # NaN, a number too long or too large, a repeated key
        where = _field_of(exc.loc, exc.data, known_keys) if exc.loc else "<json>"
        return None, [Problem(lineno, _session_id_of(exc.data), where, exc.message, path)]
    except json.JSONDecodeError as exc:
        return None, [Problem(lineno, "?", "<json>", f"malformed JSON: {exc.msg} (column {exc.colno})", path)]
    except RecursionError:
        return None, [Problem(lineno, "?", "<json>", "JSON nested too deeply", path)]
    bad = _lone_surrogate(obj, known_keys) if "\\u" in line else None
    if bad is not None:
        return None, [Problem(lineno, _session_id_of(obj), bad, "not valid Unicode: a \\u escape encodes a lone "
                              "surrogate", path)]
    sid = _session_id_of(obj)
    if not isinstance(obj, dict):
        return None, [Problem(lineno, sid, "<line>", f"expected a JSON object, got {type(obj).__name__}", path)]
    oversized = size_problems(obj, limits, known_keys)
    if oversized:
        return None, [Problem(lineno, sid, fld, msg, path) for fld, msg in oversized]
    try:
        return Session.model_validate(obj), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown field (its name is not shown)"
            problems.append(Problem(lineno, sid, _field_of(err["loc"], obj, known_keys), msg, path))
        return None, problems
    except RecursionError:
        return None, [Problem(lineno, sid, "<line>", "JSON nested too deeply", path)]
