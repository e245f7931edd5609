"""Error types shared by the library and the CLI.

Messages never carry transcript or rationale text: they name the file, line, session id and field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class CareError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with `exit_code`."""

    exit_code = 1


class UsageError(CareError):
    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in an annotation file, located without quoting its content."""

    line: int
    session_id: str
    field: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line} session={self.session_id or '?'} field={self.field}: {self.message}"


def label(text: str, limit: int = 80) -> str:
    """An identifier or key fit for a one-line message: non-printables replaced, clipped to `limit`."""
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def _natural(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """By file and line, then field in natural order (`client_ratings.2` before `client_ratings.10`)."""
    return sorted(problems, key=lambda p: (p.file, p.line, _natural(p.field), p.message, p.session_id))


class InvalidData(CareError):
    """The input has problems; `problems` holds every one of them (sorted by line)."""

    def __init__(self, problems: list[Problem]):
        self.problems = sort_problems(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
