"""Atomic, private file writes: write to a temporary path beside the target, then rename.

A crash never leaves a half-written file at the target, and what the pipeline writes is not readable by
other users of the machine (transcripts and models are sensitive).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from datetime import datetime
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
        raise cannot_write(path, exc) from None


def cannot_write(path: str | Path, exc: OSError) -> CareError:
    """The one-line error of every writer whose write to `path` failed: the reason (no permission, read-only
    or full file system, ...) and, when the error concerned another file (a temporary sibling, a source being
    copied), that file's path. Never the data being written."""
    reason = exc.strerror or type(exc).__name__
    other = exc.filename if exc.filename not in (None, str(path), path) else None
    return CareError(f"{path}: cannot write ({reason}{f': {other}' if other else ''})")


def check_writable(path: str | Path) -> None:
    """Refuse, before any work, an output path this process could not create: a temporary entry must be
    creatable (and removable) in the nearest existing directory above it, which is what the atomic writers do
    later. Catches a read-only directory or file system, a missing permission and a parent that is a file, also
    for root (an actual create, not `os.access`); raises the writers' own error (`cannot_write`)."""
    path = Path(path).absolute()
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".probe", dir=parent))
    except OSError as exc:
        raise cannot_write(path, exc) from None


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
    return write_then_place(path, data, os.replace, mode, tmp_prefix)


def write_then_place(path: str | Path, data: bytes, place: Callable[[str, Path], None], mode: int = FILE_MODE,
                     tmp_prefix: str | None = None) -> Path:
    """Write `data` to a temporary sibling of `path` (fsynced, `mode`), then `place(tmp, path)` puts it there
    (`os.replace`; `care.cache.publish_file`: a hard link that keeps an existing file). The temporary file is
    gone afterwards, whatever happened; an OSError propagates (callers turn it into `cannot_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        place(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
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

    An existing directory at `path` is replaced only after the new one is complete (callers check first that
    it is theirs to replace). An OSError, in the block or in the rename, becomes `cannot_write`'s one line; the
    temporary sibling is removed and `path` is left as it was.
    """
    with staged_dir(path, _replace_dir) as tmp:
        yield tmp


@contextlib.contextmanager
def staged_dir(path: str | Path, place: Callable[[Path, Path], None]) -> Iterator[Path]:
    """Yield a new private (0700) temporary sibling of `path`; when the block succeeds, `place(tmp, path)` puts it
    in place (`atomic_dir`: replace; `care.cache.new_entry`: publish once). On any failure the sibling is removed,
    and an OSError becomes `cannot_write`'s one line naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        yield tmp
        place(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise cannot_write(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    old = None
    if os.path.lexists(path):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except OSError:
        if old is not None:
            os.replace(old, path)  # put the old one back: `path` never goes missing
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ locks


def _lock_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
        return (f"`{info['command']}` (pid {int(info['pid'])} on {info['host']}, since {info['since']})"
                if info else "another process")
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"


def _lock_record(fd: int, command: str) -> None:
    info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)


@contextlib.contextmanager
def file_lock(path: str | Path, command: str, *, exclusive: bool, wait_s: float,
              refusal: Callable[[str], str]) -> Iterator[Path]:
    """Hold `fcntl.flock` on the lock file `path` (exclusive or shared), waiting up to `wait_s` seconds.

    The operating system releases it when the holder exits, even on SIGKILL. The file records who took it
    last (command, pid, host, time); when the lock is not free in time, CareError(`refusal(holder)`) is raised,
    `holder` naming that process (and how long this one waited)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                    raise CareError(refusal(_lock_holder(fd) + waited)) from None
                time.sleep(0.2)
        _lock_record(fd, command)
        yield path
    finally:
        os.close(fd)  # releases the lock
