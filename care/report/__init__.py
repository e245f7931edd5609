"""`care report`: one self-contained HTML page from `care score` output and the sessions it scored.

    write_report(scores_path, sessions_path, out, instrument) -> the page's path

The page holds client data (the transcripts): it is written atomically with mode 0600 and says so in its
first lines (care.report.html).
"""

from __future__ import annotations

from pathlib import Path

from care.data.instrument import Instrument
from care.fsutil import atomic_write_bytes
from care.report.html import render
from care.report.inputs import load_inputs

__all__ = ["write_report"]


def write_report(scores_path: str | Path, sessions_path: str | Path, out: str | Path, instrument: Instrument) -> Path:
    """Read and check both files, render the page, write it to `out` (temporary file, then rename; 0600)."""
    data = load_inputs(scores_path, sessions_path, instrument)
    return atomic_write_bytes(out, render(data).encode("utf-8"), mode=0o600)
