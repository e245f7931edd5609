"""Validate an annotation file with a Great Expectations suite.

The content rules live here, once, as Great Expectations expectations over four flat tables built from
the parsed sessions (structure and types are the reader's job, `care.data.reader`):

- sessions:   one row per session: ids, language, turn counts, whether client ratings are present;
- turns:      one row per turn: speaker, the LENGTH of the stripped text (never the text) and, for turns with
              a `time`, the numbers `care.data.timestamps` derives from it (parsed, kind, gaps in seconds);
- ratings:    one row per (session, client/counselor, item) over the union of the given keys and the
              instrument's items, the rating null where an item was not rated;
- rationales: the same for rationales, with the LENGTH of the stripped rationale (never the text).

Files are read as a stream (`validate_file`, `SessionValidator`): each session is flattened into these rows
as it is read and then dropped, and the per-row tables are validated in chunks, so memory holds rows of small
fields, never the file's transcripts. Great Expectations therefore never sees transcript or rationale text. Its results are read only for the
failing rows' `row` index, which this module maps back to file line, session id and field; row values in
its results are never copied anywhere.

Great Expectations takes seconds to import: it is imported lazily, on the first validation.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from care.errors import CareError, InvalidData, Problem, label, sort_problems
from care.data.instrument import Instrument, load_instrument
from care.data.ids import SPELLING, normalise_id
from care.data.reader import JsonlStream, ParsedFile, key_label
from care.data.schema import Session
from care.data.timestamps import MAX_SESSION_SPAN, TimesTally, times_summary, turn_time_columns
from care.params import DataLimits

SPEAKERS = ("counselor", "client")
RATING_KINDS = ("client_ratings", "counselor_ratings")
_ID_CLIP = 80
_INT_CLAMP = 2**62  # ratings beyond int64 stay off the scale without overflowing the column


# ----------------------------------------------------------------------------------------------------------
# Result


@dataclass
class ValidationResult:
    path: Path
    n_lines: int
    n_sessions: int
    problems: list[Problem]
    sessions: list[Session] = field(default_factory=list)  # in file order, when kept; only meaningful when valid
    lines: list[int] = field(default_factory=list)  # the 1-based line of each kept session
    instrument: str = ""
    timestamps: dict[str, Any] = field(default_factory=dict)  # times_summary of every session that parsed
    sha256: str = ""  # of the bytes validated (files read by `validate_file`)
    n_bytes: int = 0

    @property
    def valid(self) -> bool:
        return not self.problems

    def report(self) -> dict[str, Any]:
        """Counts and located problems only (and, from turn times, counts and medians): no transcript,
        rationale or rating values."""
        by_field: dict[str, int] = {}
        for p in self.problems:
            key = _field_family(p.field)
            by_field[key] = by_field.get(key, 0) + 1
        return {
            "file": str(self.path),
            "instrument": self.instrument,
            "valid": self.valid,
            "n_lines": self.n_lines,
            "n_sessions": self.n_sessions,
            "n_sessions_with_problems": len({p.line for p in self.problems}),
            "n_problems": len(self.problems),
            "problems_by_field": dict(sorted(by_field.items())),
            "timestamps": self.timestamps,
            "problems": [
                {"line": p.line, "session_id": p.session_id, "field": p.field, "message": p.message}
                for p in self.problems
            ],
        }


def _field_family(name: str) -> str:
    """`client_ratings.7` -> `client_ratings`, `turns[3].speaker` -> `turns.speaker`."""
    head = name.split(".", 1)[0]
    if head.startswith("turns["):
        return "turns" + ("." + name.split(".", 1)[1] if "." in name else "")
    return head


# ----------------------------------------------------------------------------------------------------------
# Flat tables (built in pure Python; no rule is decided here)


def _clamp(v: int) -> int:
    return max(-_INT_CLAMP, min(_INT_CLAMP, v))


@dataclass
class _Table:
    """Columns for one DataFrame plus, per row, where it came from (line, session id, field stem)."""

    name: str
    columns: dict[str, list] = field(default_factory=dict)
    where: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, line: int, sid: str, stem: str, **values: Any) -> None:
        row = len(self.where)
        self.where.append((line, sid, stem))
        if not self.columns:
            self.columns = {"row": [], **{k: [] for k in values}}
        self.columns["row"].append(row)
        for k, v in values.items():
            self.columns[k].append(v)

    def __len__(self) -> int:
        return len(self.where)


def _spellings(values: list[str | None]) -> list[int | None]:
    """Per value: how many distinct spellings its normalised form has in `values` (None stays None)."""
    seen: dict[str, set[str]] = {}
    for v in values:
        if v is not None:
            seen.setdefault(normalise_id(v), set()).add(v)
    return [None if v is None else len(seen[normalise_id(v)]) for v in values]


def _key(key: str, given: dict, items: list[str]) -> str:
    """An item key as problems show it: an item id of the instrument, else its position (never its text)."""
    return key_label(key, 1 + list(given).index(key) if key in given else 0, items)


ROW_TABLES = ("turns", "ratings", "rationales")


def _add_session(tables: dict[str, _Table], session: Session, line: int, items: list[str]) -> None:
    """The flat rows of one session: a `sessions` row (its id spellings are counted once the file is read) and
    its `turns`, `ratings` and `rationales` rows. Lengths of text, never text."""
    sid = label(session.session_id, _ID_CLIP) if session.session_id.strip() else "?"
    speakers = [t.speaker for t in session.turns]
    tables["sessions"].add(
        line, sid, "",
        session_id=session.session_id,
        session_key=normalise_id(session.session_id),
        client_id=session.client_id,
        client_key=None if session.client_id is None else normalise_id(session.client_id),
        counselor_id=session.counselor_id,
        language=session.language,
        n_turns=len(session.turns),
        n_counselor_turns=speakers.count("counselor"),
        n_client_turns=speakers.count("client"),
        n_client_ratings=None if session.client_ratings is None else len(session.client_ratings),
    )
    turns, ratings, rationales = tables["turns"], tables["ratings"], tables["rationales"]
    for i, (turn, times) in enumerate(zip(session.turns, turn_time_columns(session))):
        turns.add(line, sid, f"turns[{i}]", speaker=turn.speaker, text_len=len(turn.text.strip()), **times)
    for kind in RATING_KINDS:
        given = getattr(session, kind)
        if given is None:
            continue
        for key in [*given, *(i for i in items if i not in given)]:
            value = given.get(key)
            ratings.add(line, sid, f"{kind}.{_key(key, given, items)}", kind=kind, item=key,
                        rating=None if value is None else _clamp(value))
    if session.rationales is not None:
        given = session.rationales
        for key in [*given, *(i for i in items if i not in given)]:
            text = given.get(key)
            rationales.add(line, sid, f"rationales.{_key(key, given, items)}", item=key,
                           text_len=None if text is None else len(text.strip()))


# ----------------------------------------------------------------------------------------------------------
# The suite


@dataclass
class _Rule:
    table: str
    expectation: Any  # a great_expectations Expectation
    field: Callable[[str], str]  # row's field stem -> problem field
    message: str


def _rules(instrument: Instrument, ratings_required: bool) -> list[_Rule]:
    import great_expectations.expectations as gxe

    lo, hi = instrument.scale.min, instrument.scale.max
    items = instrument.item_ids
    langs = ", ".join(instrument.languages)
    const = lambda name: (lambda _stem: name)  # noqa: E731
    stem = lambda stem: stem  # noqa: E731
    time = lambda stem: f"{stem}.time"  # noqa: E731
    span = MAX_SESSION_SPAN.total_seconds()
    span_text = f"{span / 3600:g} hours"
    from great_expectations.expectations.row_conditions import Column

    nonempty_turns = {"row_condition": Column("n_turns") > 0}
    rules = [
        # ids compare as normalised (care.data.ids): a session given twice in two spellings is a duplicate
        _Rule("sessions", gxe.ExpectColumnValuesToBeUnique(column="session_key"),
              const("session_id"), "duplicate session id"),
        _Rule("sessions", gxe.ExpectColumnValuesToMatchRegex(column="session_key", regex=r"\S"),
              const("session_id"), "empty session id"),
        _Rule("sessions", gxe.ExpectColumnValuesToNotBeNull(column="client_id"),
              const("client_id"), "missing client id"),
        _Rule("sessions", gxe.ExpectColumnValuesToMatchRegex(column="client_key", regex=r"\S"),
              const("client_id"), "empty client id"),
        # one client (or counselor) written two ways would be split across folds: one spelling per id
        _Rule("sessions", gxe.ExpectColumnValuesToBeBetween(column="client_spellings", max_value=1),
              const("client_id"), "client id spelling"),
        _Rule("sessions", gxe.ExpectColumnValuesToBeBetween(column="counselor_spellings", max_value=1),
              const("counselor_id"), "counselor id spelling"),
        _Rule("sessions", gxe.ExpectColumnValuesToBeInSet(column="language", value_set=list(instrument.languages)),
              const("language"), f"unknown language (the instrument has: {langs})"),
        _Rule("sessions", gxe.ExpectColumnValuesToBeBetween(column="n_turns", min_value=1),
              const("turns"), "no turns"),
        _Rule("sessions", gxe.ExpectColumnValuesToBeBetween(column="n_counselor_turns", min_value=1, **nonempty_turns),
              const("turns"), "no counselor turn"),
        _Rule("sessions", gxe.ExpectColumnValuesToBeBetween(column="n_client_turns", min_value=1, **nonempty_turns),
              const("turns"), "no client turn"),
        _Rule("turns", gxe.ExpectColumnValuesToBeInSet(column="speaker", value_set=list(SPEAKERS)),
              lambda s: f"{s}.speaker", f"speaker must be one of: {', '.join(SPEAKERS)}"),
        _Rule("turns", gxe.ExpectColumnValuesToBeBetween(column="text_len", min_value=1),
              lambda s: f"{s}.text", "empty text"),
        _Rule("turns", gxe.ExpectColumnValuesToBeBetween(column="time_parsed", min_value=1),
              time, "not an ISO 8601 time (e.g. 2024-05-01T14:03:12+09:00)"),
        _Rule("turns", gxe.ExpectColumnValuesToBeBetween(column="time_same_kind", min_value=1),
              time, "times with and without a UTC offset are mixed in this session"),
        _Rule("turns", gxe.ExpectColumnValuesToBeBetween(column="time_gap_s", min_value=0),
              time, "earlier than the previous turn's time (times must not go back)"),
        _Rule("turns", gxe.ExpectColumnValuesToBeBetween(column="time_since_first_s", max_value=span),
              time, f"more than {span_text} after the session's first time"),
        _Rule("ratings", gxe.ExpectColumnValuesToBeInSet(column="item", value_set=items),
              stem, "not an item of the instrument"),
        _Rule("ratings", gxe.ExpectColumnValuesToNotBeNull(column="rating"),
              stem, "item not rated"),
        _Rule("ratings", gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=lo, max_value=hi),
              stem, f"rating outside the scale {lo}-{hi}"),
        _Rule("rationales", gxe.ExpectColumnValuesToBeInSet(column="item", value_set=items),
              stem, "not an item of the instrument"),
        _Rule("rationales", gxe.ExpectColumnValuesToNotBeNull(column="text_len"),
              stem, "no rationale for this item"),
        _Rule("rationales", gxe.ExpectColumnValuesToBeBetween(column="text_len", min_value=1),
              stem, "empty rationale"),
    ]
    if ratings_required:
        rules.append(_Rule("sessions", gxe.ExpectColumnValuesToNotBeNull(column="n_client_ratings"),
                           const("client_ratings"), "missing client ratings"))
    return rules


_GX: dict[str, Any] = {}


def _batch_definition(table: str):
    """The ephemeral context's whole-dataframe batch definition for `table` (created once per process)."""
    if "context" not in _GX:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _GX["context"] = context
        _GX["source"] = context.data_sources.add_pandas("care_annotations")
        _GX["defs"] = {}
    defs = _GX["defs"]
    if table not in defs:
        defs[table] = _GX["source"].add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
    return defs[table]


_NULLABLE_INT = ("rating", "text_len", "n_client_ratings", "time_parsed", "time_same_kind", "client_spellings",
                 "counselor_spellings")  # Int64: null = absent
_NULLABLE_FLOAT = ("time_gap_s", "time_since_first_s")  # Float64: null means absent
_STRINGS = ("session_id", "session_key", "client_id", "client_key", "counselor_id", "language", "speaker", "item",
            "kind")  # object: None stays None


def _frame(table: _Table):
    import pandas as pd

    columns = {}
    for name, values in table.columns.items():
        if name in _STRINGS:
            columns[name] = pd.Series(values, dtype=object)
        elif name in _NULLABLE_INT:
            columns[name] = pd.array(values, dtype="Int64")
        elif name in _NULLABLE_FLOAT:
            columns[name] = pd.array(values, dtype="Float64")
        else:
            columns[name] = values
    return pd.DataFrame(columns)


def _raised(exception_info: Any) -> bool:
    if not isinstance(exception_info, dict):
        return False
    if "raised_exception" in exception_info:
        return bool(exception_info["raised_exception"])
    return any(_raised(v) for v in exception_info.values())


CHUNK_ROWS = 25_000  # turn, rating and rationale rows validated at a time: memory holds at most this many


class SessionValidator:
    """The suite over sessions given one at a time (`add`), holding flat rows of small fields, never sessions.

    The per-row tables (turns, ratings, rationales: row-local rules) are validated every CHUNK_ROWS rows and
    dropped; the sessions table (one row per session: ids, language, counts) is kept to the end, where its
    rules across sessions (unique session ids, one spelling per client and counselor id) run on all of it.
    `finish` returns the rule problems, sorted. With `ratings_required=False` (scoring new transcripts) client
    ratings may be absent, but when present they must still cover every item on the scale.
    """

    def __init__(self, instrument: Instrument, file: str | Path = "", ratings_required: bool = True,
                 chunk_rows: int | None = None):
        import great_expectations as gx

        _batch_definition("sessions")  # creates the ephemeral context before any suite exists
        self.file, self.items, self.chunk_rows = str(file), instrument.item_ids, chunk_rows or CHUNK_ROWS
        self.times = TimesTally()
        self.problems: list[Problem] = []
        self._rules: dict[str, list[_Rule]] = {}
        self._suites: dict[str, Any] = {}
        for rule in _rules(instrument, ratings_required):
            self._rules.setdefault(rule.table, []).append(rule)
        for name, rules in self._rules.items():
            suite = gx.ExpectationSuite(name=f"care_{name}")
            for i, rule in enumerate(rules):
                rule.expectation.meta = {"care_rule": i}
                suite.add_expectation(rule.expectation)
            self._suites[name] = suite
        self.tables = {name: _Table(name) for name in ("sessions", *ROW_TABLES)}

    def add(self, session: Session, line: int) -> None:
        _add_session(self.tables, session, line, self.items)
        self.times.add(session)
        for name in ROW_TABLES:
            if len(self.tables[name]) >= self.chunk_rows:
                self._run(self.tables[name])
                self.tables[name] = _Table(name)

    def finish(self) -> list[Problem]:
        sessions = self.tables["sessions"]
        if len(sessions):
            sessions.columns["client_spellings"] = _spellings(sessions.columns["client_id"])
            sessions.columns["counselor_spellings"] = _spellings(sessions.columns["counselor_id"])
        for table in self.tables.values():
            self._run(table)
        self.tables = {name: _Table(name) for name in self.tables}
        return sort_problems(self.problems)

    def _run(self, table: _Table) -> None:
        name = table.name
        rules = self._rules.get(name)
        if not len(table) or not rules:
            return
        batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": _frame(table)})
        result = batch.validate(self._suites[name], result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["row"],
            "return_unexpected_index_query": False,
            "partial_unexpected_count": 0,
        })
        for res in result.results:
            rule = rules[res.expectation_config.meta["care_rule"]]
            if _raised(res.exception_info):
                raise RuntimeError(f"validation rule {res.expectation_config.type} on {name} failed to run")
            if res.success:
                continue
            rows = [int(entry["row"]) for entry in (res.result.get("unexpected_index_list") or [])]
            if not rows:
                raise RuntimeError(f"validation rule {res.expectation_config.type} on {name} failed without rows")
            message = rule.message
            groups = _id_groups(rule.message, table) if rule.message in _ID_MESSAGES else {}
            for row in rows:
                line, sid, stem = table.where[row]
                if groups:
                    message = _id_message(rule.message, table, row, groups)
                self.problems.append(Problem(line, sid, rule.field(stem), message, self.file))


def validate_sessions(parsed: ParsedFile, instrument: Instrument, ratings_required: bool = True) -> list[Problem]:
    """Run the suite over the sessions that parsed; return the rule problems, sorted.

    Only the content rules: the reader's structural problems stay in `parsed.problems` (validate_parsed
    merges both)."""
    validator = SessionValidator(instrument, parsed.path, ratings_required)
    for session, line in zip(parsed.sessions, parsed.lines):
        validator.add(session, line)
    return validator.finish()


_ID_MESSAGES = {"duplicate session id": "session", "client id spelling": "client", "counselor id spelling": "counselor"}


def _id_groups(rule: str, table: _Table) -> dict[str, list[int]]:
    """Rows by normalised id, for the id column `rule` is about."""
    groups: dict[str, list[int]] = {}
    for r, value in enumerate(table.columns[f"{_ID_MESSAGES[rule]}_id"]):
        if value is not None:
            groups.setdefault(normalise_id(value), []).append(r)
    return groups


def _id_message(rule: str, table: _Table, row: int, groups: dict[str, list[int]]) -> str:
    """Where else the id occurs (up to 3 lines), and whether the other spelling differs only invisibly."""
    what = _ID_MESSAGES[rule]
    raw = table.columns[f"{what}_id"]
    group = [r for r in groups[normalise_id(raw[row])] if r != row]
    if rule != "duplicate session id":  # the lines where the same id is spelled another way
        group = [r for r in group if raw[r] != raw[row]]
    lines = [table.where[r][0] for r in group]
    others = list(itertools.islice((n for n in lines if n != table.where[row][0]), 3))
    more = len(lines) - len(others)
    shown = ", ".join(map(str, others)) + (f" and {more} more" if more > 0 else "")
    if rule == "duplicate session id":
        return (f"duplicate session id (also on line {shown})" if all(raw[r] == raw[row] for r in group) else
                f"duplicate session id (on line {shown} too, written differently: {SPELLING})")
    return (f"{what} id written differently on line {shown} ({SPELLING}): the same {what} would count as two; "
            "use one spelling")


# ----------------------------------------------------------------------------------------------------------
# Files


def _instrument(ref: str | Path | Instrument | None) -> Instrument:
    return ref if isinstance(ref, Instrument) else load_instrument(ref)


def validate_parsed(parsed: ParsedFile, instrument: Instrument, ratings_required: bool = True) -> ValidationResult:
    """Every structural and rule problem of an already parsed file (sessions in memory), sorted by line."""
    problems = sort_problems(parsed.problems + validate_sessions(parsed, instrument, ratings_required))
    return ValidationResult(
        path=parsed.path,
        n_lines=parsed.n_lines,
        n_sessions=len(parsed.sessions),
        problems=problems,
        sessions=parsed.sessions,
        lines=parsed.lines,
        instrument=instrument.name,
        timestamps=times_summary(parsed.sessions),
    )


def validate_stream(stream: JsonlStream, instrument: Instrument, ratings_required: bool = True, *,
                    keep_sessions: bool = False, observe: Callable[[Session], None] | None = None) -> ValidationResult:
    """Read and validate a file one line at a time: memory holds the flat rows of `SessionValidator`, not the
    sessions (unless `keep_sessions`). `observe` sees each session that parsed, in file order. Great
    Expectations starts at the first session that parses: a file refused as a whole never waits for it."""
    validator: SessionValidator | None = None
    reader_problems: list[Problem] = []
    kept: list[Session] = []
    lines: list[int] = []
    n_sessions = 0
    for item in stream:
        if item.session is None:
            reader_problems += item.problems
            continue
        n_sessions += 1
        if validator is None:
            validator = SessionValidator(instrument, stream.path, ratings_required)
        validator.add(item.session, item.line)
        if observe is not None:
            observe(item.session)
        if keep_sessions:
            kept.append(item.session)
            lines.append(item.line)
    return ValidationResult(
        path=stream.path,
        n_lines=stream.n_lines,
        n_sessions=n_sessions,
        problems=sort_problems(reader_problems + (validator.finish() if validator else [])),
        sessions=kept,
        lines=lines,
        instrument=instrument.name,
        timestamps=(validator.times if validator else TimesTally()).summary(),
        sha256=stream.sha256,
        n_bytes=stream.n_bytes,
    )


def validate_file(
    path: str | Path,
    instrument: str | Path | Instrument | None = None,
    report_path: str | Path | None = None,
    ratings_required: bool = True,
    limits: DataLimits | None = None,
    *,
    keep_sessions: bool = False,
    observe: Callable[[Session], None] | None = None,
    progress: bool | None = None,
    record: bool = False,
) -> ValidationResult:
    """Read and validate `path` as a stream: every structural and rule problem, sorted by line.

    Raises CareError (one line) for file-level problems: missing, not UTF-8, empty. Writes the JSON
    report (counts and problems only) atomically to `report_path` when given, also (with an "error"
    entry) before raising a file-level error. The sessions are kept in the result only with `keep_sessions`;
    `progress` as in `JsonlStream` (None: a bar for long files on a terminal). `record`: a pass is recorded
    (`care.data.validated`), so a later `validate_data` of the same bytes, instrument and limits skips the suite.
    """
    inst = _instrument(instrument)
    try:
        result = validate_stream(JsonlStream(path, limits, inst.item_ids, progress=progress), inst, ratings_required,
                                 keep_sessions=keep_sessions, observe=observe)
    except CareError as exc:
        if report_path is not None:  # never leave a stale report from an earlier run behind
            from care.fsutil import atomic_write_json

            atomic_write_json(report_path, {"file": str(path), "instrument": inst.name, "valid": False,
                                            "error": str(exc), "n_problems": 1, "problems": []})
        raise
    if report_path is not None:
        from care.fsutil import atomic_write_json

        atomic_write_json(report_path, result.report())
    if record and result.valid:
        from care.data.validated import record_pass

        record_pass(result.sha256, result.n_bytes, inst, limits or DataLimits(), ratings_required)
    return result


def load_valid_sessions(
    path: str | Path,
    instrument: str | Path | Instrument | None = None,
    ratings_required: bool = True,
    limits: DataLimits | None = None,
) -> list[Session]:
    """The sessions of `path`, in file order; raises InvalidData listing every problem otherwise."""
    result = validate_file(path, instrument=instrument, ratings_required=ratings_required, limits=limits,
                           keep_sessions=True)
    if result.problems:
        raise InvalidData(result.problems)
    return result.sessions
