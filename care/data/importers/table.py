"""`care import table PATH --map MAPPING.yaml --out DIR`: sessions from the usual shapes of counseling data.

Shapes (`format` in the mapping, `care.data.importers.mapping`):
- `json_dir`: PATH is a directory of `*.json` files, one session (a JSON object) each, read in name order;
- `jsonl`: PATH is a file with one session (a JSON object) per line;
- `csv`: PATH is a directory with a CSV of turns (one row per turn, the session id on every row) and a CSV of
  ratings (one row per session, one column per mapped item); sessions come in the order of their first turn
  row, turns in file order (or by `turns.order`). A session field is read from the ratings file when it has
  the column, else from the turn rows, where it must be the same on every row of the session.

Rules, per session: speaker values map to counselor/client by `speakers` (`ignore`d ones are dropped and
counted, any other value skips the session); a turn's text is stripped and an empty turn dropped (counted);
ids and speaker values that are JSON integers become strings (other non-strings, and a context or rationale
that is not a string, skip the session); a rating must be an integer (a JSON integer, or a cell of digits):
anything else skips the session, as does a missing client rating (unless `ratings_required: false` and no
item is rated at all); a later session with an id already imported is skipped. Nothing is guessed: JSON is
parsed strictly (`care.data.strict_json`: NaN, numbers JSON cannot hold and repeated keys skip their record),
a reference that names both a dotted key and a nested path, a CSV turn order that is not digits or repeats,
and a text over `data.limits` (`over_limit`; a CSV cell over max_text_chars too) skip the session; a CSV
header naming a column twice is refused. Every session kept is then
checked with the same rules as `care validate` (`care.data.validation`: the instrument's items and scale,
languages, speakers, turn times...) and skipped, with those problems, when any applies.

`DIR/import.json` holds counts, the skip reasons and every problem located by source (file, line or row),
session id and field: never a value or any text. `DIR/sessions.jsonl` and `DIR/import.json` are byte-identical
for the same input and mapping, wherever they live. DIR must be absent, empty, or an earlier output of this
command (then replaced as a whole); anything else there is refused and left alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from care.data import strict_json
from care.data.importers.mapping import Mapping, instrument_ref, item_fields, load_mapping
from care.data.instrument import Instrument, load_instrument
from care.data.schema import Session, Turn
from care.errors import CareError, label
from care.fsutil import read_utf8
from care.params import DataLimits

IMPORTER = "care import table"
REPORT = "import.json"
SESSIONS = "sessions.jsonl"
SKIP_REASONS = ("malformed", "over_limit", "no_session_id", "duplicate_session_id", "unknown_speaker",
                "not_an_integer", "incomplete_ratings", "invalid")
UNMATCHED = "unmatched_rating_rows"  # CSV: ratings rows of no session in the turns file (counted apart)
_TURN = re.compile(r"turns\[(\d+)\]")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


@dataclass
class _Raw:
    """One session as read, before mapping: session fields, turn records and where each came from."""

    source: str  # file, file:line (JSONL) or file:line of the first turn row (CSV)
    fields: dict[str, Any]  # session-level values by mapping reference (CSV) or the whole record (JSON)
    turns: list[tuple[str, dict[str, Any]]]  # (source of the turn, turn record)
    ratings: dict[str, Any] | None = None  # CSV: the ratings row; JSON: None (ratings are in `fields`)


@dataclass
class ImportResult:
    sessions: list[Session]
    read: int
    skipped: dict[str, int]
    dropped_turns: dict[str, int]
    problems: list[dict[str, str]] = field(default_factory=list)  # {"source", "session_id", "field", "message"}
    unmatched_rating_rows: int = 0


class _Skip(Exception):
    def __init__(self, reason: str, fld: str, message: str, source: str | None = None, count: int = 1,
                 session_id: str = "?"):
        super().__init__(message)
        self.reason, self.field, self.message, self.source, self.count = reason, fld, message, source, count
        self.session_id = session_id


def _get(record: Any, ref: str | None) -> Any:
    """The value at a dotted reference in a JSON object (or a CSV row), None when absent."""
    if ref is None:
        return None
    node, found = record, True
    for part in ref.split("."):
        if not isinstance(node, dict) or part not in node:
            node, found = None, False
            break
        node = node[part]
    if isinstance(record, dict) and ref in record:  # a CSV column or a key that itself holds dots
        if found and "." in ref:
            raise _Skip("malformed", ref, "both a key with this name and a nested path of it: which one is meant "
                        "is ambiguous")
        return record[ref]
    return node


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text_value(value: Any, fld: str) -> str | None:
    """An id or other short string: a string (stripped) or a JSON integer; None when blank."""
    if _blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Skip("malformed", fld, "not a string")
    return str(value).strip()


def _text(value: Any, fld: str) -> str | None:
    """A text field (context): a string, stripped; None when blank; anything else is refused, never converted."""
    if value is not None and not isinstance(value, str):
        raise _Skip("malformed", fld, "not a string")
    return None if _blank(value) else value.strip()


def _integer(value: Any, fld: str) -> int | None:
    if _blank(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    raise _Skip("not_an_integer", fld, "not an integer")


# ------------------------------------------------------------------------------------------------ reading


def _field_names(m: Mapping) -> set[str]:
    """The keys the mapping names (each part of a dotted reference): problems may show these, never others."""
    refs = [m.session.id, m.session.client_id, m.session.counselor_id, m.session.language, m.session.context,
            m.turns.path, m.turns.speaker, m.turns.text, m.turns.time, m.turns.order]
    for kind in (m.client_ratings, m.counselor_ratings, m.rationales, m.helper_ratings):
        refs += list(kind.values()) if isinstance(kind, dict) else [kind]
    return {part for ref in refs if ref for part in ref.split(".")}


def _record(text: str, source: str, known: set[str]) -> _Raw | _Skip:
    """One JSON record (care.data.strict_json), or the located reason it is skipped."""
    try:
        return _Raw(source, strict_json.loads(text), [])
    except strict_json.JsonProblem as exc:  # NaN, a number too long or too large, a repeated key
        return _Skip("malformed", strict_json.path_label(exc.loc, exc.data, known), exc.message, source)
    except (json.JSONDecodeError, RecursionError):
        return _Skip("malformed", "<json>", "malformed JSON", source)


def _read_json_dir(path: Path, known: set[str]) -> Iterator[_Raw | _Skip]:
    if not path.is_dir():
        raise CareError(f"{path}: format json_dir needs a directory of .json files")
    files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
    if not files:
        raise CareError(f"{path}: no .json files")
    for p in files:
        try:
            text = p.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            yield _Skip("malformed", "<json>", "not a UTF-8 JSON file", p.name)
            continue
        yield _record(text, p.name, known)


def _read_jsonl(path: Path, known: set[str]) -> Iterator[_Raw | _Skip]:
    text = read_utf8(path, "format jsonl needs a file with one JSON object per line")
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
        if line.strip():
            yield _record(line, f"{path.name}:{n}", known)


@dataclass
class _Rows:
    """A CSV file as read: its header, (line of the row's start, row) per row, and the rows with a cell over
    data.limits.max_text_chars (line -> (column, length))."""

    header: list[str]
    rows: list[tuple[int, dict[str, str]]]
    too_long: dict[int, tuple[str, int]]


def _csv_rows(path: Path, delimiter: str, needed: list[str], max_chars: int) -> _Rows:
    """The rows of a CSV file; CareError when a needed column is absent or a column name repeats. Any field
    parses (the file is in memory already: csv's default limit of 128 KiB would fail the whole file); a cell
    over `max_chars` marks its row."""
    text = read_utf8(path, "no such file (named in the mapping's csv section)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    default = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        try:
            header = next(reader)
        except StopIteration:
            raise CareError(f"{path}: empty (expected a header row)") from None
        except csv.Error:
            raise CareError(f"{path}:1: malformed CSV header") from None
        twice = next((c for c in header if c.strip() and header.count(c) > 1), None)
        if twice is not None:
            raise CareError(f"{path}:1: column {label(twice, 60)!r} appears {header.count(twice)} times in the "
                            "header; which one counts is ambiguous: rename or remove the others")
        missing = [c for c in needed if c not in header]
        if missing:
            raise CareError(f"{path}: no column {label(missing[0], 60)!r} (named in the mapping)")
        out, start = _Rows(header, [], {}), reader.line_num + 1
        try:
            for cells in reader:
                if any(c.strip() for c in cells):
                    if len(cells) != len(header):
                        raise CareError(f"{path}:{start}: {len(cells)} cells in a row of {len(header)} columns")
                    out.rows.append((start, dict(zip(header, cells))))
                    long = next(((h, len(c)) for h, c in zip(header, cells) if len(c) > max_chars), None)
                    if long:
                        out.too_long[start] = long
                start = reader.line_num + 1
        except csv.Error:
            raise CareError(f"{path}:{start}: malformed CSV row") from None
        return out
    finally:
        csv.field_size_limit(default)


def _read_csv(path: Path, m: Mapping, max_chars: int) -> Iterator[_Raw | _Skip]:
    if not path.is_dir():
        raise CareError(f"{path}: format csv needs a directory holding {m.csv.turns} and {m.csv.ratings}")
    t = m.turns
    turn_cols = [c for c in (m.session.id, t.speaker, t.text, t.time, t.order) if c]
    rating_cols = [*m.client_ratings.values(), *m.counselor_ratings.values(), *m.rationales.values(),
                   *m.helper_ratings.values()]
    rated = _csv_rows(path / m.csv.ratings, m.csv.delimiter, [m.session.id, *rating_cols], max_chars)
    turned = _csv_rows(path / m.csv.turns, m.csv.delimiter, turn_cols, max_chars)
    ratings_header, rating_rows, turn_header, turn_rows = rated.header, rated.rows, turned.header, turned.rows
    session_refs = [r for r in (m.session.client_id, m.session.counselor_id, m.session.language, m.session.context) if r]
    absent = [r for r in session_refs if r not in ratings_header and r not in turn_header]
    if absent:
        raise CareError(f"{path}: no column {label(absent[0], 60)!r} in {m.csv.ratings} or {m.csv.turns} (named in the mapping)")
    ratings: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in rating_rows:
        ratings.setdefault(row[m.session.id].strip(), []).append((line, row))
    by_session: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in turn_rows:
        by_session.setdefault(row[m.session.id].strip(), []).append((line, row))
    for sid, rows in by_session.items():
        source, who = f"{m.csv.turns}:{rows[0][0]}", label(sid, 80)
        if not sid:
            yield _Skip("no_session_id", "session_id", "turn rows without a session id", source)
            continue
        found = ratings.get(sid, [])
        if len(found) > 1:
            yield _Skip("malformed", "client_ratings", f"{len(found)} rows in {m.csv.ratings} "
                        f"(lines {', '.join(str(n) for n, _ in found[:3])})", source, session_id=who)
            continue
        long = [(m.csv.turns, n, turned.too_long[n]) for n, _ in rows if n in turned.too_long]
        long += [(m.csv.ratings, n, rated.too_long[n]) for n, _ in found if n in rated.too_long]
        if long:
            name, line, (column, size) = long[0]
            yield _Skip("over_limit", label(column, 60), f"{size} characters, over the limit of {max_chars} "
                        "(data.limits.max_text_chars)", f"{name}:{line}", session_id=who)
            continue
        fields = {m.session.id: sid}
        rating_row = found[0][1] if found else None
        for ref in session_refs:
            if rating_row is not None and ref in ratings_header:
                fields[ref] = rating_row[ref]
                continue
            if ref not in turn_header:  # only the ratings file has it, and this session has no ratings row
                fields[ref] = None
                continue
            values = {row[ref].strip() for _, row in rows}
            if len(values) > 1:
                yield _Skip("malformed", ref, f"differs between the session's turn rows in {m.csv.turns}", source,
                            session_id=who)
                break
            fields[ref] = values.pop()
        else:
            if t.order:
                order = [row[t.order] for _, row in rows]
                if not all(_INTEGER.fullmatch(v) for v in order):
                    yield _Skip("malformed", t.order, "turn order is not an integer (digits) on every row", source,
                                session_id=who)
                    continue
                if len({int(v) for v in order}) < len(order):
                    yield _Skip("malformed", t.order, "turn order repeats a number: which turn comes first is "
                                "ambiguous", source, session_id=who)
                    continue
                rows = sorted(rows, key=lambda r: int(r[1][t.order]))
            yield _Raw(source, fields, [(f"{m.csv.turns}:{line}", row) for line, row in rows], rating_row or {})
    seen = set(by_session)
    orphans = [line for line, row in rating_rows if row[m.session.id].strip() not in seen]
    if orphans:
        yield _Skip(UNMATCHED, "session_id", f"{len(orphans)} row(s) whose session has no turn rows (first: line "
                    f"{orphans[0]}); not imported", m.csv.ratings, len(orphans))


# ------------------------------------------------------------------------------------------------ mapping


def _ratings(record: Any, refs: dict[str, str], kind: str) -> dict[str, int] | None:
    values = {item: _integer(_get(record, ref), f"{kind}.{label(item, 40)}") for item, ref in refs.items()}
    given = {k: v for k, v in values.items() if v is not None}
    return given or None


def _session(raw: _Raw, m: Mapping) -> tuple[Session, dict[str, int], list[str]]:
    """The session a raw record maps to, the turns it dropped (empty text, ignored speakers) and the source of
    each turn kept. A problem's `turns[i]` here is the i-th turn as read (dropped ones included)."""
    if not isinstance(raw.fields, dict):
        raise _Skip("malformed", "<record>", "record is not a JSON object")
    sid = _text_value(_get(raw.fields, m.session.id), "session_id")
    if sid is None:
        raise _Skip("no_session_id", "session_id", "no session id")
    turns_in = raw.turns
    if m.format != "csv":
        listed = _get(raw.fields, m.turns.path)
        if not isinstance(listed, list):
            raise _Skip("malformed", "turns", f"{label(m.turns.path, 60)} is not a list of turns")
        turns_in = [(raw.source, t) for t in listed]
    dropped = {"empty_text": 0, "ignored_speaker": 0}
    speakers = {**{v: "counselor" for v in m.speakers.counselor}, **{v: "client" for v in m.speakers.client}}
    turns: list[Turn] = []
    sources: list[str] = []
    for i, (where, record) in enumerate(turns_in):
        if not isinstance(record, dict):
            raise _Skip("malformed", f"turns[{i}]", "turn is not an object", where)
        speaker = _text_value(_get(record, m.turns.speaker), f"turns[{i}].speaker")
        if speaker in m.speakers.ignore:
            dropped["ignored_speaker"] += 1
            continue
        if speaker not in speakers:
            raise _Skip("unknown_speaker", f"turns[{i}].speaker", "speaker value not in the mapping's speakers", where)
        text = _get(record, m.turns.text)
        if text is not None and not isinstance(text, str):
            raise _Skip("malformed", f"turns[{i}].text", "not a string", where)
        if _blank(text):
            dropped["empty_text"] += 1
            continue
        time = _text_value(_get(record, m.turns.time), f"turns[{i}].time") if m.turns.time else None
        turns.append(Turn(speaker=speakers[speaker], text=text.strip(), time=time))
        sources.append(where)
    record = raw.ratings if raw.ratings is not None else raw.fields
    client = _ratings(record, m.client_ratings, "client_ratings")
    missing = [item for item in m.client_ratings if client is None or item not in client]
    if missing and (m.ratings_required or client is not None):
        raise _Skip("incomplete_ratings", f"client_ratings.{label(missing[0], 40)}",
                    f"no client rating ({len(missing)} item(s) missing)")
    rationales = {}
    for item, ref in m.rationales.items():
        text = _get(record, ref)
        if text is not None and not isinstance(text, str):
            raise _Skip("malformed", f"rationales.{label(item, 40)}", "not a string")
        if text and text.strip():
            rationales[item] = text.strip()
    language = m.language or _text_value(_get(raw.fields, m.session.language), "language")
    return Session(
        session_id=sid,
        client_id=_text_value(_get(raw.fields, m.session.client_id), "client_id"),
        counselor_id=_text_value(_get(raw.fields, m.session.counselor_id), "counselor_id"),
        language=language or "",
        context=_text(_get(raw.fields, m.session.context), "context"),
        turns=turns,
        client_ratings=client,
        counselor_ratings=_ratings(record, m.counselor_ratings, "counselor_ratings"),
        rationales=rationales or None,
        helper_ratings=_ratings(record, m.helper_ratings, "helper_ratings"),
    ), dropped, sources


def _resolved(m: Mapping, instrument: Instrument, where: str) -> Mapping:
    """The mapping with its ratings patterns filled in for the instrument's items; refuses an item the instrument
    lacks and a partial mapping of a ratings kind."""
    resolved = {kind: item_fields(getattr(m, kind), instrument.item_ids)
                for kind in ("client_ratings", "counselor_ratings", "rationales")}
    for kind, refs in resolved.items():
        extra = sorted(set(refs) - set(instrument.item_ids))
        if extra:
            raise CareError(f"{where}: mapping field={kind}: {label(extra[0], 40)!r} is not an item of instrument "
                            f"{instrument.name}")
        lacking = [i for i in instrument.item_ids if i not in refs]
        if refs and lacking:
            raise CareError(f"{where}: mapping field={kind}: maps no field for item(s) {', '.join(lacking[:5])} "
                            f"of instrument {instrument.name}")
    return m.model_copy(update=resolved)


def _where(fld: str, turn_sources: list[str], source: str) -> str:
    """Where a problem of a kept session is: a turn's (`turns[i]...`) at that turn's row (CSV), else the record."""
    turn = _TURN.match(fld)
    return turn_sources[int(turn.group(1))] if turn and int(turn.group(1)) < len(turn_sources) else source


def import_table(path: str | Path, mapping_path: str | Path,
                 limits: DataLimits | None = None) -> tuple[ImportResult, Mapping, str, Instrument]:
    """Read PATH as the mapping says; returns (result, mapping, mapping sha256, instrument)."""
    from care.data.reader import ParsedFile, size_problems
    from care.data.validation import validate_parsed

    path, limits = Path(path), limits or DataLimits()
    m, sha = load_mapping(mapping_path)
    instrument = load_instrument(instrument_ref(m, mapping_path))
    m = _resolved(m, instrument, str(mapping_path))
    reader = {"json_dir": _read_json_dir, "jsonl": _read_jsonl}.get(m.format)
    raws = reader(path, _field_names(m)) if reader else _read_csv(path, m, limits.max_text_chars)
    skipped = {r: 0 for r in SKIP_REASONS}
    dropped = {"empty_text": 0, "ignored_speaker": 0}
    problems: list[dict[str, str]] = []
    kept: list[tuple[str, Session, dict[str, int], list[str]]] = []
    seen: set[str] = set()
    read = 0

    def skip(exc: _Skip, source: str, sid: str) -> None:
        skipped[exc.reason] += 1
        problems.append({"source": exc.source or source, "session_id": sid, "field": exc.field, "message": exc.message})

    unmatched = 0
    for raw in raws:
        if isinstance(raw, _Skip) and raw.reason == UNMATCHED:
            unmatched = raw.count
            problems.append({"source": raw.source, "session_id": "?", "field": raw.field, "message": raw.message})
            continue
        read += 1
        if isinstance(raw, _Skip):
            skip(raw, raw.source or "?", raw.session_id)
            continue
        try:
            sid = _get(raw.fields, m.session.id)
        except _Skip:
            sid = None
        sid_label = label(str(sid), 80) if isinstance(sid, (str, int)) and not isinstance(sid, bool) else "?"
        try:
            session, session_dropped, turn_sources = _session(raw, m)
        except _Skip as exc:
            skip(exc, raw.source, sid_label)
            continue
        over = size_problems(session.model_dump(), limits, instrument.item_ids)
        if over:  # the reader's limits (texts, turns, keys), as `care validate` would refuse them
            skip(_Skip("over_limit", over[0][0], over[0][1], _where(over[0][0], turn_sources, raw.source)),
                 raw.source, sid_label)
            continue
        if session.session_id in seen:
            skip(_Skip("duplicate_session_id", "session_id", "session id already imported from an earlier record"),
                 raw.source, sid_label)
            continue
        seen.add(session.session_id)
        kept.append((raw.source, session, session_dropped, turn_sources))
    parsed = ParsedFile(path=path, sessions=[k[1] for k in kept], lines=list(range(1, len(kept) + 1)),
                        n_lines=len(kept))
    invalid: dict[int, list] = {}
    if kept:
        for p in validate_parsed(parsed, instrument, ratings_required=m.ratings_required).problems:
            invalid.setdefault(p.line, []).append(p)
    sessions = []
    for n, (source, session, session_dropped, turn_sources) in enumerate(kept, 1):
        if n in invalid:
            skipped["invalid"] += 1
            for p in invalid[n]:
                problems.append({"source": _where(p.field, turn_sources, source), "session_id": p.session_id,
                                 "field": p.field, "message": p.message})
        else:
            sessions.append(session)
            for k, v in session_dropped.items():
                dropped[k] += v
    return ImportResult(sessions, read, skipped, dropped, problems, unmatched), m, sha, instrument


def _input_files(path: Path, m: Mapping) -> list[Path]:
    if m.format == "jsonl":
        return [path]
    if m.format == "csv":
        return [path / m.csv.turns, path / m.csv.ratings]
    return sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())


def _ours(out: Path) -> bool:
    """`out` is absent, an empty directory, or exactly an earlier output of this command."""
    if not out.exists() and not out.is_symlink():
        return True
    if out.is_symlink() or not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    if not names:
        return True
    if not names <= {SESSIONS, REPORT}:
        return False
    try:
        return json.loads((out / REPORT).read_text("utf-8")).get("importer") == IMPORTER
    except (OSError, ValueError, AttributeError):
        return False


def write_import(path: str | Path, mapping_path: str | Path, out: str | Path) -> dict:
    """Import PATH with the mapping into `out/sessions.jsonl` and `out/import.json` (the report, returned).

    Refuses, before reading anything, an `out` that is not absent, empty or an earlier import; raises
    CareError when no session could be imported (nothing is written then).
    """
    from care.data.timestamps import times_summary
    from care.fsutil import atomic_dir

    path, out = Path(path), Path(out)
    if not _ours(out):
        raise CareError(f"--out {out}: exists and is not an earlier `{IMPORTER}` output (only {SESSIONS} and "
                         f"{REPORT}); refusing to write into it: give a new or empty directory")
    if not path.exists():
        raise CareError(f"{path}: no such file or directory")
    result, m, sha, instrument = import_table(path, mapping_path)
    report = {
        "importer": IMPORTER,
        "format": m.format,
        "mapping_sha256": sha,
        "inputs": [{"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in _input_files(path, m)],
        "instrument": instrument.name,
        "read": result.read,
        "written": len(result.sessions),
        "skipped": result.skipped,
        "dropped_turns": result.dropped_turns,
        **({UNMATCHED: result.unmatched_rating_rows} if m.format == "csv" else {}),
        "timestamps": times_summary(result.sessions),
        "problems": result.problems,
    }
    if not result.sessions:
        raise CareError(f"{path}: no session imported from {result.read} record(s): skipped "
                        f"{ {k: v for k, v in result.skipped.items() if v} }")
    with atomic_dir(out) as tmp:
        (tmp / SESSIONS).write_text("".join(s.to_json() + "\n" for s in result.sessions), "utf-8")
        (tmp / REPORT).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
        for p in (tmp / SESSIONS, tmp / REPORT):
            p.chmod(0o600)
    return report
