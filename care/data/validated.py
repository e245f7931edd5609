"""Passing validations, recorded so the same bytes are validated once (`care validate`, then the run's step).

A file that passed every rule is recorded in the content-keyed cache (`care.cache`) under a key of everything
that decides the verdict: the sha256 and size of its bytes, the instrument as parsed, the size limits, whether
ratings are required, the validation code (`source_digest`) and the Great Expectations version. The `validate`
stage of `dvc repro` (`care validate`) records its pass; the run's `validate_data` then hashes the bytes
(streamed) and, when that key is recorded, parses them with the schema only instead of running the suite
again. Other bytes, instrument, limits or code have another key: they are validated. The report
(metrics/validation.json) is never trusted for this: it is a file of the checkout, editable and shared by git.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from care.cache import cache_root, digest, publish_file, source_digest
from care.data.instrument import Instrument
from care.data.schema import Session
from care.params import DataLimits

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _suite_version() -> str:
    try:
        return version("great-expectations")
    except PackageNotFoundError:
        return "?"


def verdict_key(sha256: str, n_bytes: int, instrument: Instrument, limits: DataLimits, ratings_required: bool) -> str:
    """The cache key of a pass: a digest of every input of the verdict (never a path or a time)."""
    return digest({"sha256": sha256, "n_bytes": n_bytes, "instrument": instrument.model_dump(mode="json"),
                   "limits": limits.model_dump(mode="json"), "ratings_required": ratings_required,
                   "code": source_digest("care.data.validation"), "great_expectations": _suite_version()})


def _record(key: str) -> Path:
    return cache_root() / "validated" / f"{key}.json"


def record_pass(sha256: str, n_bytes: int, instrument: Instrument, limits: DataLimits, ratings_required: bool) -> None:
    """Record that these bytes passed (a published cache file; numbers and names only)."""
    path = _record(verdict_key(sha256, n_bytes, instrument, limits, ratings_required))
    publish_file(path, json.dumps({"sha256": sha256, "n_bytes": n_bytes, "instrument": instrument.name}).encode())


def _file_sha256(path: Path, limit: int) -> tuple[str, int] | None:
    """(sha256, size) of the file's bytes, streamed; None when it cannot be read or is over `limit` bytes."""
    h, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                return None
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
    except OSError:
        return None
    return h.hexdigest(), n


def reuse_pass(path: str | Path, instrument: Instrument, limits: DataLimits, ratings_required: bool = True,
               observe: Callable[[Session], None] | None = None):
    """The `ValidationResult` of a recorded pass of `path`'s current bytes, parsed (schema only) and each
    session shown to `observe`; None when no pass of these bytes is recorded (or they change while read):
    then the caller validates (with a fresh `observe`: this one may have seen some sessions)."""
    from care.data.reader import JsonlStream
    from care.data.validation import ValidationResult

    path = Path(path)
    hashed = _file_sha256(path, limits.file_bytes)
    if hashed is None or not _record(verdict_key(*hashed, instrument, limits, ratings_required)).is_file():
        return None
    stream = JsonlStream(path, limits, instrument.item_ids)
    n_sessions = 0
    for item in stream:
        if item.session is None or item.problems:
            return None  # cannot happen for bytes that passed; validating says what is wrong
        n_sessions += 1
        if observe is not None:
            observe(item.session)
    if (stream.sha256, stream.n_bytes) != hashed:
        return None
    log.info("%s: sha256 %s passed validation before; Great Expectations not rerun", path, hashed[0][:12])
    return ValidationResult(path=path, n_lines=stream.n_lines, n_sessions=n_sessions, problems=[],
                            instrument=instrument.name, sha256=stream.sha256, n_bytes=stream.n_bytes)
