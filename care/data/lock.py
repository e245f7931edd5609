"""Runs and intake exclude each other on a DVC-tracked data directory.

A training run (`care train`, and so `dvc repro`) holds a SHARED lock on its data directory for the whole
run; `care annotations add` holds it EXCLUSIVELY while it checks and changes the data. So intake never
changes the data between two folds of a run, two intakes never interleave, and several runs may read the
same data at once. The lock is `fcntl.flock` on `<repo>/.dvc/tmp/care-data-<digest of the directory>.lock`
(git and DVC ignore `.dvc/tmp`), through `care.fsutil.file_lock`: the operating system releases it when its
holder exits, even on SIGKILL, and a refusal names the holder.

A data directory outside any DVC repository is not locked: intake refuses such a directory anyway. Every
step of a run still refuses data whose sha256 differs from what the run validated (`care.run.data`).
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

from care.fsutil import file_lock

RUN_WAIT_S = 120.0  # a run waits this long for an intake (seconds) before it refuses
INTAKE_WAIT_S = 0.0  # intake refuses at once by default: a run takes minutes to hours


def data_directory(data_path: str | Path) -> Path:
    """The directory a data path lies in (the path itself when it is a directory)."""
    path = Path(data_path).absolute()
    return path if path.is_dir() else path.parent


def lock_file(data_path: str | Path) -> Path | None:
    """The lock file of the data directory of `data_path`, or None outside a DVC repository."""
    directory = data_directory(data_path).resolve()
    root = next((p for p in [directory, *directory.parents] if (p / ".dvc").is_dir()), None)
    if root is None:
        return None
    return root / ".dvc" / "tmp" / f"care-data-{hashlib.sha256(str(directory).encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def data_lock(data_path: str | Path, command: str, *, exclusive: bool, wait_s: float) -> Iterator[Path | None]:
    """Hold the data directory's lock (exclusive for intake, shared for a run), waiting up to `wait_s` seconds.

    Raises CareError naming the holder when the lock is not free in time; yields the lock file (None when the
    directory is outside a DVC repository and nothing is locked)."""
    path = lock_file(data_path)
    if path is None:
        yield None
        return

    def refusal(holder: str) -> str:
        return (f"{data_directory(data_path)} is in use by {holder}; nothing changed. `{command}` and a training "
                "run on the same data exclude each other: try again when it has finished")

    with file_lock(path, command, exclusive=exclusive, wait_s=wait_s, refusal=refusal):
        yield path
