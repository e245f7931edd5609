"""The data of one run: validated once, then read by every later step only if its bytes are unchanged.

`validate_data` runs the full Great Expectations suite and records the file's and the instrument's sha256
in a `DataRef`. Every later step calls `load_data(ref)`: it reads the file once, checks the sha256 of the
bytes it read (cheap) and parses those same bytes with the schema only. Data that changed after validation
(an intake between folds, say) is refused, never trained or scored on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from care.data.instrument import Instrument, load_instrument_verified
from care.data.schema import Session
from care.errors import CareError
from care.params import CvParams, DataParams
from care.run.documents import FoldsPlan


class DataRef(BaseModel):
    """What the run validated: where the data is, its digest, and counts (no text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    sha256: str
    limit: int | None
    instrument: str
    instrument_sha256: str
    prompts_sha256: str  # the prompt wording of the instrument's languages (shipped or its own)
    n_bytes: int  # the file's size at validation: later reads stop beyond it
    n_sessions: int
    n_clients: int
    n_with_counselor_ratings: int
    n_with_rationales: int
    languages: list[str]
    # provenance of the validated bytes (care.run.provenance): the data's version (DVC md5 only when the bytes
    # match the tracking .dvc file, else sha256:...), whether they differ from that file, what it records
    version: str | None = None
    dirty: bool | None = None
    dvc_md5: str | None = None


class DataChanged(CareError):
    """The data (or instrument) differs from what the run validated."""


def _read(path: Path, at_most: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(at_most + 1)
    except OSError as exc:
        raise CareError(f"{path}: cannot read the data ({type(exc).__name__})") from None


def read_parsed(data: DataParams):
    """(raw bytes, parsed JSONL, instrument, instrument sha256) of `data.path`: size limits first, then the schema
    (no Great Expectations yet). What `validate_data` and the run's preflight (`care.run.preflight`) read."""
    from care.data.reader import parse_jsonl, read_limited

    path = Path(data.path)
    raw = read_limited(path, data.limits)  # refused before reading when over data.limits.max_file_mb
    instrument, instrument_sha256 = load_instrument_verified(data.instrument)
    return raw, parse_jsonl(raw, path, data.limits, instrument.item_ids), instrument, instrument_sha256


def limited(sessions: list[Session], limit: int | None) -> list[Session]:
    """The sessions a run uses: the first `data.limit` (all when None)."""
    return sessions if limit is None else sessions[:limit]


def validate_data(data: DataParams) -> DataRef:
    """Validate `data.path` with every rule (Great Expectations), reading it as a stream, and record what was
    validated: the sha256 and size of the very bytes the rules saw, and counts over the first `data.limit`
    sessions. Bytes whose pass is recorded for the same instrument and limits (`care.data.validated`: the
    `validate` stage ran first) are parsed with the schema only: the suite runs once per `dvc repro`."""
    from care.data.validated import reuse_pass
    from care.data.validation import validate_file
    from care.run.provenance import data_provenance, file_digests

    instrument, instrument_sha256 = load_instrument_verified(data.instrument)
    counts = _Counts(data.limit)
    result = reuse_pass(data.path, instrument, data.limits, observe=counts.add)  # `care validate` passed these bytes
    if result is None:
        counts = _Counts(data.limit)
        result = validate_file(data.path, instrument, limits=data.limits, observe=counts.add, record=True)
    if result.problems:
        from care.errors import InvalidData

        raise InvalidData(result.problems)
    return DataRef(
        path=str(Path(data.path)),
        sha256=result.sha256,
        limit=data.limit,
        instrument=data.instrument,
        instrument_sha256=instrument_sha256,
        n_bytes=result.n_bytes,
        prompts_sha256=instrument.prompts_digest(),
        n_sessions=counts.n_sessions,
        n_clients=len(counts.clients),
        n_with_counselor_ratings=counts.n_with_counselor_ratings,
        n_with_rationales=counts.n_with_rationales,
        languages=sorted(counts.languages),
        **data_provenance(data.path, result.sha256, file_digests(data.path, result.sha256)),
    )


class _Counts:
    """What a DataRef counts, over the first `limit` sessions (all when None), one session at a time."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.n_sessions = self.n_with_counselor_ratings = self.n_with_rationales = 0
        self.clients: set[str | None] = set()
        self.languages: set[str] = set()

    def add(self, session: Session) -> None:
        if self.limit is not None and self.n_sessions >= self.limit:
            return
        self.n_sessions += 1
        self.clients.add(session.client_id)
        self.n_with_counselor_ratings += session.counselor_ratings is not None
        self.n_with_rationales += bool(session.rationales)
        self.languages.add(session.language)


def load_data(ref: DataRef) -> tuple[list[Session], Instrument]:
    """The sessions the run validated and the instrument; raises DataChanged if either changed since."""
    from care.data.reader import parse_jsonl

    path = Path(ref.path)
    raw = _read(path, ref.n_bytes)  # never more than was validated (+1 byte, which fails the check)
    if len(raw) != ref.n_bytes or hashlib.sha256(raw).hexdigest() != ref.sha256:
        raise DataChanged(f"{path}: the data changed after this run validated it (sha256 {ref.sha256[:12]}...); "
                          "start a new run")
    instrument, instrument_sha256 = load_instrument_verified(ref.instrument)  # parsed from the bytes it hashed
    if instrument_sha256 != ref.instrument_sha256:
        raise DataChanged(f"instrument {ref.instrument}: changed after this run validated the data; start a new run")
    if instrument.prompts_digest() != ref.prompts_sha256:
        raise DataChanged(f"instrument {ref.instrument}: its prompt wording changed after this run validated the data; "
                          "start a new run")
    parsed = parse_jsonl(raw, path)
    if parsed.problems:  # same bytes as validated: cannot happen unless the schema code changed mid-run
        raise DataChanged(f"{path}: no longer parses as it did at validation; start a new run")
    return limited(parsed.sessions, ref.limit), instrument


def plan_folds(ref: DataRef, cv: CvParams) -> FoldsPlan:
    """The run's client-grouped, stratified folds of the validated data (care.data.folds)."""
    from care.data.folds import plan_folds as plan

    sessions, instrument = load_data(ref)
    return FoldsPlan.model_validate(plan(sessions, instrument, cv.folds, cv.seed))


def split(sessions: list[Session], folds: FoldsPlan | None, k: int | None) -> tuple[list[Session], list[Session]]:
    """(training, held-out) sessions of fold `k`; every session trains when `k` is None (the final fit)."""
    held = set() if k is None else set(folds.held_out(k))
    return [s for s in sessions if s.session_id not in held], [s for s in sessions if s.session_id in held]
