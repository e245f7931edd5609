"""What `care report` reads: the `care score` output and the sessions it scored, checked against each other.

Every problem names the file, line, session id and field, never text of a transcript or a rationale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from care.data import strict_json
from care.data.instrument import Instrument
from care.data.reader import read_jsonl
from care.data.schema import Session
from care.errors import CareError, InvalidData, Problem, label
from care.fsutil import read_utf8

Interval = tuple[float, float]


def _level(key: str) -> str:
    """An interval level, e.g. "80": a number in (0, 100). Its text is never shown: a key can hold anything."""
    try:
        value = float(key)
    except ValueError:
        raise ValueError("an interval level must be a number of percent, e.g. \"80\"") from None
    if not 0 < value < 100:
        raise ValueError("an interval level must be a number of percent between 0 and 100")
    return key


Levels = dict[Annotated[str, AfterValidator(_level)], Interval]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Quote(_Record):
    turn: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class ItemResult(_Record):
    expected: float
    distribution: dict[str, float]
    greedy: int | None = None
    interval: Levels | None = None
    rationale: str | None = None
    quotes: list[Quote] | None = None


class SessionResult(_Record):
    """One line of `care score` output (fields the report shows; others are ignored)."""

    session_id: str
    items: dict[str, ItemResult]
    dimensions: dict[str, float | None]
    interval: dict[str, Levels] | None = None
    truncated: bool = False


@dataclass
class ReportInput:
    """Scores in file order, each with its session."""

    results: list[SessionResult]
    sessions: list[Session]
    instrument: Instrument


def _field(loc: tuple, obj: object) -> str:
    """A pydantic error location as a field path; an interval level (a key of `interval.DIM` or
    `items.ID.interval`) is named by its position (`level#2`), never by its text."""
    parts = [p for p in loc if p != "[key]"]
    out, node = "", obj
    for i, p in enumerate(parts):
        if isinstance(p, int):
            out += f"[{p}]"
            node = node[p] if isinstance(node, list) and 0 <= p < len(node) else None
            continue
        level = (i == 2 and parts[0] == "interval") or (i == 3 and parts[0] == "items" and parts[2] == "interval")
        position = 1 + list(node).index(p) if isinstance(node, dict) and p in node else 0
        out += ("." if i else "") + (f"level#{position}" if level else label(str(p), 40))
        node = node.get(p) if isinstance(node, dict) else None
    return out or "<line>"


_KEYS = {"session_id", "items", "dimensions", "interval", "expected", "distribution", "greedy", "rationale", "quotes",
         "turn", "start", "end", "truncated"}


def _sid(obj: object) -> str:
    return label(obj["session_id"]) if isinstance(obj, dict) and isinstance(obj.get("session_id"), str) else "?"


def read_scores(path: Path) -> list[tuple[int, SessionResult]]:
    """(line number, record) for every line of a `care score` output; InvalidData lists every problem."""
    text = read_utf8(path, "no such file")
    out, problems = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = strict_json.loads(line)
        except strict_json.JsonProblem as exc:
            problems.append(Problem(lineno, _sid(exc.data), strict_json.path_label(exc.loc, exc.data, _KEYS),
                                    exc.message, str(path)))
            continue
        except (ValueError, RecursionError):
            problems.append(Problem(lineno, "?", "<json>", "malformed JSON", str(path)))
            continue
        sid = _sid(obj)
        try:
            out.append((lineno, SessionResult.model_validate(obj)))
        except ValidationError as exc:
            for err in exc.errors(include_input=False, include_url=False):
                problems.append(Problem(lineno, sid, _field(err["loc"], obj), err["msg"], str(path)))
    if problems:
        raise InvalidData(problems)
    if not out:
        raise CareError(f"{path}: no scores")
    return out


def _check(path: Path, line: int, result: SessionResult, session: Session, instrument: Instrument) -> list[Problem]:
    """The record against its instrument (items, dimensions, scale) and its session (quote places)."""
    sid, where = label(result.session_id), str(path)
    problems = []
    if sorted(result.items) != sorted(instrument.item_ids):
        problems.append(Problem(line, sid, "items", f"items do not match instrument {instrument.name}", where))
        return problems
    if sorted(result.dimensions) != sorted(instrument.dimensions):
        problems.append(Problem(line, sid, "dimensions", f"dimensions do not match instrument {instrument.name}", where))
    low, high = instrument.scale.min, instrument.scale.max
    for item_id, item in result.items.items():
        if not low <= item.expected <= high:
            problems.append(Problem(line, sid, f"items.{item_id}.expected", f"outside the scale {low}-{high}", where))
        for k, q in enumerate(item.quotes or []):
            if q.turn >= len(session.turns) or not q.start < q.end <= len(session.turns[q.turn].text):
                problems.append(Problem(line, sid, f"items.{item_id}.quotes[{k}]",
                                        "not a span of the session's transcript (are the sessions the ones scored?)",
                                        where))
    for dim, value in result.dimensions.items():
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            problems.append(Problem(line, sid, f"dimensions.{dim}", f"outside the scale {low}-{high}", where))
    return problems


def load_inputs(scores_path: str | Path, sessions_path: str | Path, instrument: Instrument) -> ReportInput:
    """The scores and the sessions they name; refuses a score without its session, a duplicate, or a
    record that does not fit the instrument or its transcript."""
    scores_path, sessions_path = Path(scores_path), Path(sessions_path)
    scored = read_scores(scores_path)
    parsed = read_jsonl(sessions_path)
    if parsed.problems:
        raise InvalidData(parsed.problems)
    by_id: dict[str, Session] = {}
    for session in parsed.sessions:
        by_id.setdefault(session.session_id, session)
    problems, seen, results, sessions = [], set(), [], []
    for line, result in scored:
        sid = label(result.session_id)
        if result.session_id in seen:
            problems.append(Problem(line, sid, "session_id", "scored twice in this file", str(scores_path)))
            continue
        seen.add(result.session_id)
        session = by_id.get(result.session_id)
        if session is None:
            problems.append(Problem(line, sid, "session_id", f"no such session in {sessions_path}", str(scores_path)))
            continue
        found = _check(scores_path, line, result, session, instrument)
        problems += found
        if not found:
            results.append(result)
            sessions.append(session)
    if problems:
        raise InvalidData(problems)
    return ReportInput(results, sessions, instrument)


def overall(result: SessionResult) -> float | None:
    """The session's predicted alliance: the mean of its dimension scores (None when one is missing)."""
    values = list(result.dimensions.values())
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def first_level(results: list[SessionResult]) -> str | None:
    """The lowest interval level the scores carry (e.g. "80"), or None without intervals."""
    levels = {level for r in results for cells in (r.interval or {}).values() for level in cells}
    return min(levels, key=float) if levels else None


def interval_width(result: SessionResult, level: str) -> float | None:
    """Mean width of the session's dimension intervals at `level`."""
    cells = [c.get(level) for c in (result.interval or {}).values()]
    if not cells or any(c is None for c in cells):
        return None
    return sum(hi - lo for lo, hi in cells) / len(cells)


def uncertain(results: list[SessionResult], level: str | None, share: float = 0.2) -> list[bool]:
    """Which sessions to mark uncertain: the `share` whose intervals at `level` are widest (at least one,
    never when every session's width is the same)."""
    widths = [interval_width(r, level) if level else None for r in results]
    known = sorted(w for w in widths if w is not None)
    if not known or known[-1] - known[0] < 1e-9:
        return [False] * len(results)
    cut = known[max(0, len(known) - max(1, math.ceil(share * len(known))))]
    return [w is not None and w >= cut and w > known[0] + 1e-9 for w in widths]
