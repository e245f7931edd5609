"""Atomic, private file writes: write to a temporary path beside the target, then rename.

A crash never leaves a half-written file at the target, and what the pipeline writes is not readable by
other users of the machine (transcripts and models are sensitive).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from care.errors import CareError

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_umask() -> None:
    """Make every file this process creates unreadable by group and others."""
    os.umask(0o077)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = FILE_MODE, tmp_prefix: str | None = None) -> Path:
    """Write `data` to a temp file beside `path` (named `tmp_prefix`*.tmp), fsync, rename over `path`.

    An OS error (the target is a directory, its parent is a file, no permission, disk full) becomes a
    one-line CareError; the target is then untouched and no temp file is left.
    """
    path = Path(path)
    refuse_non_regular(path)
    try:
        return _atomic_write_bytes(path, data, mode, tmp_prefix)
    except OSError as exc:
        raise CareError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None


def refuse_non_regular(path: Path) -> None:
    """Raise unless `path` is absent or a regular file: a FIFO, device, socket, directory or symlink at an
    output path is never replaced (as root, `--out /dev/null` would otherwise replace the device node)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent (a parent that is a file fails at the write)
        return
    except OSError as exc:
        raise CareError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a symbolic link" if stat.S_ISLNK(st.st_mode) else \
            "not a regular file"
        raise CareError(f"{path}: cannot write: it exists and is {kind}; refusing to replace it with an output file")


MIN_ROOM = 1 << 20  # bytes free an output's file system must have before any work starts (a full disk is refused)


def free_bytes(directory: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the file system that holds `directory`."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_output_file(path: str | Path, room: int = MIN_ROOM) -> None:
    """Refuse, in one line and before any work, an output file that could not be written: `path` is a directory
    (UsageError), a symbolic link, FIFO, device or socket; its nearest existing parent is not a directory or
    takes no new file (read-only file system, no permission: tried with a probe file, as root too); or its
    file system has fewer than `room` bytes free. Writers run it again just before their final write."""
    from care.errors import UsageError

    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise UsageError(f"{path}: is a directory, expected a file path")
    refuse_non_regular(path)
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
        free = free_bytes(parent)
    except OSError as exc:
        raise CareError(f"{path}: cannot write ({exc.strerror or type(exc).__name__})") from None
    if free < room:
        raise CareError(f"{path}: cannot write: {free} bytes free on its file system, at least {room} needed")


def open_regular(path: str | Path) -> int:
    """An fd for reading `path`, which must be a regular file: a symbolic link at the last component is not
    followed and a FIFO or device never blocks (it is refused after opening, by its fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CareError(f"{path}: not a regular file")
    return fd


def _marker(path: Path, limit: int = 16 << 20) -> Any:
    """The JSON document in a regular file of at most `limit` bytes, or None (absent, odd, unreadable, not JSON)."""
    try:
        with os.fdopen(open_regular(path), "rb") as fh:
            data = fh.read(limit + 1)
        return json.loads(data.decode("utf-8")) if len(data) <= limit else None
    except (OSError, CareError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def ours_or_empty(out: str | Path, marker: str, recognise: Callable[[Any], bool]) -> bool:
    """`out` is absent, an empty directory, or a directory holding `marker`, a JSON file this tool wrote
    (`recognise(document)` says so). A symbolic link, a file or any other directory is not."""
    out = Path(out)
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False
    with os.scandir(out) as it:
        if next(it, None) is None:
            return True
    return bool(recognise(_marker(out / marker)))


def check_output_dir(out: str | Path, marker: str, recognise: Callable[[Any], bool], writer: str) -> None:
    """Refuse, before any work, an output directory that holds something `writer` did not write."""
    if not ours_or_empty(out, marker, recognise):
        raise CareError(f"{out}: exists and is not a directory that {writer} wrote (no {marker} of its own); "
                        "refusing to write into it: choose another --out, or move it away")


def read_utf8(path: str | Path, missing: str) -> str:
    """A text file's content (a leading BOM dropped); one-line CareErrors for a missing file (`missing` says
    what was expected) and for bytes that are not UTF-8 (their offset, never the bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CareError(f"{path}: {missing}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CareError(f"{path}: not UTF-8 (byte offset {exc.start})") from None


def _atomic_write_bytes(path: Path, data: bytes, mode: int, tmp_prefix: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_lines(path: str | Path, lines: list[str]) -> Path:
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory at a temporary sibling and move it to `path` only when the block succeeds.

    An existing directory at `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
