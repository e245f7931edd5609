"""Turn times (optional `turns[i].time`, ISO 8601): parsing, the numbers validation checks, per-session features.

The rules themselves (parseable; one kind: all with a UTC offset or all without; never going back; the whole
session within `MAX_SESSION_SPAN` of its first time) are expectations in `care.data.validation`, over the
columns `turn_time_columns` computes. A turn without a time is skipped by every rule (times are optional,
also for some turns only). `time_features` gives what a text-only model cannot see, as numbers: how long the
session ran and how long each side took to reply (the paper names lateness and slow replies as what its
model misses); `care validate`'s report summarises them, never with text.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any, Iterable

from care.data.schema import Session

MAX_SESSION_SPAN = timedelta(days=1)


def parse_time(value: str) -> datetime | None:
    """The time an ISO 8601 string gives (`2024-05-01T14:03:12+09:00`, `...Z`, a bare date), or None."""
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        return None


def _aware(t: datetime) -> bool:
    return t.tzinfo is not None and t.utcoffset() is not None


def turn_time_columns(session: Session) -> list[dict[str, Any]]:
    """Per turn: `time_parsed` (1 parsed, 0 not, None no time), `time_same_kind` (1 when the turn's time has a
    UTC offset exactly when the session's first time has one), `time_gap_s` (seconds since the previous timed
    turn) and `time_since_first_s` (seconds since the session's first time); None where not defined."""
    out: list[dict[str, Any]] = []
    first: datetime | None = None
    previous: datetime | None = None
    for turn in session.turns:
        row: dict[str, Any] = {"time_parsed": None, "time_same_kind": None, "time_gap_s": None,
                               "time_since_first_s": None}
        out.append(row)
        if turn.time is None:
            continue
        t = parse_time(turn.time)
        row["time_parsed"] = int(t is not None)
        if t is None:
            continue
        if first is None:
            first = t
        row["time_same_kind"] = int(_aware(t) == _aware(first))
        if not row["time_same_kind"]:
            continue
        row["time_since_first_s"] = (t - first).total_seconds()
        if previous is not None:
            row["time_gap_s"] = (t - previous).total_seconds()
        previous = t
    return out


def time_features(session: Session) -> dict[str, float] | None:
    """Numbers from a session's turn times, or None when fewer than two turns have a usable time:
    `span_s` (first to last time), `client_reply_s` / `counselor_reply_s` (median seconds from a turn of the
    other side to this side's next turn)."""
    timed = [(turn.speaker, row) for turn, row in zip(session.turns, turn_time_columns(session))
             if row["time_since_first_s"] is not None]
    if len(timed) < 2:
        return None
    replies: dict[str, list[float]] = {"client": [], "counselor": []}
    for (before, a), (after, b) in zip(timed, timed[1:]):
        if before != after and after in replies:
            replies[after].append(b["time_since_first_s"] - a["time_since_first_s"])
    out = {"span_s": timed[-1][1]["time_since_first_s"] - timed[0][1]["time_since_first_s"]}
    for side, gaps in replies.items():
        out[f"{side}_reply_s"] = statistics.median(gaps) if gaps else None
    return out


class TimesTally:
    """`times_summary` built session by session (a validator that streams a file keeps these numbers, not the
    sessions)."""

    def __init__(self) -> None:
        self.sessions_with_times = 0
        self.turns_with_times = 0
        self.features: list[dict[str, float]] = []

    def add(self, session: Session) -> None:
        timed = sum(t.time is not None for t in session.turns)
        self.sessions_with_times += timed > 0
        self.turns_with_times += timed
        features = time_features(session) if timed > 1 else None
        if features is not None:
            self.features.append(features)

    def summary(self) -> dict[str, Any]:
        def median(key: str) -> float | None:
            values = [f[key] for f in self.features if f.get(key) is not None]
            return round(statistics.median(values), 1) if values else None

        return {
            "sessions_with_times": self.sessions_with_times,
            "turns_with_times": self.turns_with_times,
            "median_session_minutes": None if median("span_s") is None else round(median("span_s") / 60, 1),
            "median_client_reply_s": median("client_reply_s"),
            "median_counselor_reply_s": median("counselor_reply_s"),
        }


def times_summary(sessions: Iterable[Session]) -> dict[str, Any]:
    """Counts and medians over the sessions (numbers only): how many have times, and the medians over sessions
    of `time_features`."""
    tally = TimesTally()
    for session in sessions:
        tally.add(session)
    return tally.summary()
