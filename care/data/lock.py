"""Runs and intake exclude each other on a DVC-tracked data directory.

A training run (`care train`, and so `dvc repro`) holds a SHARED lock on its data directory for the whole
run; `care annotations add` holds it EXCLUSIVELY while it checks and changes the data. So intake never
changes the data between two folds of a run, two intakes never interleave, and several runs may read the
same data at once. The lock is `fcntl.flock` on `<repo>/.dvc/tmp/care-data-<digest of the directory>.lock`
(git and DVC ignore `.dvc/tmp`): the operating system releases it when its holder exits, even on SIGKILL.
The file records who took it last (command, pid, host, time), which a refusal names.

A data directory outside any DVC repository is not locked: intake refuses such a directory anyway. Every
step of a run still refuses data whose sha256 differs from what the run validated (`care.run.data`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

from care.errors import CareError

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


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        return (f"`{info['command']}` (pid {int(info['pid'])} on {info['host']}, since {info['since']})"
                if info else "another process")
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"


def _record(fd: int, command: str) -> None:
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)


@contextlib.contextmanager
def data_lock(data_path: str | Path, command: str, *, exclusive: bool, wait_s: float) -> Iterator[Path | None]:
    """Hold the data directory's lock (exclusive for intake, shared for a run), waiting up to `wait_s` seconds.

    Raises CareError naming the holder when the lock is not free in time; yields the lock file (None when the
    directory is outside a DVC repository and nothing is locked)."""
    path = lock_file(data_path)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                    raise CareError(f"{data_directory(data_path)} is in use by {_holder(fd)}{waited}; nothing "
                                    f"changed. `{command}` and a training run on the same data exclude each other: "
                                    "try again when it has finished") from None
                time.sleep(0.2)
        _record(fd, command)
        yield path
    finally:
        os.close(fd)  # releases the lock
