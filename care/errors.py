"""Error types shared by the library and the CLI.

Messages never carry transcript or rationale text: they name the file, line, session id and field.
"""

from __future__ import annotations

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


class InvalidData(CareError):
    """The input has problems; `problems` holds every one of them (sorted by line)."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
