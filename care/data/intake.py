"""Add annotated sessions to the DVC-tracked data: `care annotations add NEW.jsonl [--data DIR]`.

The new file is checked with the same rules as `care validate` (care.data.validation), then against the data
already in `DIR/sessions.jsonl`. Any of these refuses the whole file, with every problem printed as
`FILE:LINE session=ID field=NAME: problem` and nothing changed:

- a problem found by validation (this includes a session id repeated inside the new file);
- a session id already present in `DIR/sessions.jsonl` (ids compare normalised: case, surrounding spaces and
  invisible characters do not make an id new, `care.data.ids`), and a client or counselor id written
  differently from the data's;
- a client conflict. The rule: every session of a client carries the same counselor and the same
  language. A new session conflicts when its `client_id` already has sessions (in `DIR/sessions.jsonl`,
  or earlier in the new file) and
    * its `counselor_id` differs from theirs, when both are set (a missing `counselor_id` on either
      side never conflicts), or
    * its `language` differs from theirs.

Also refused before anything changes: `DIR` not tracked by a `DIR.dvc` file beside it (run `dvc add DIR`
first), and `DIR` differing from what `DIR.dvc` records (an unrecorded edit, or an earlier add that was
killed: `dvc checkout DIR --force` restores the recorded version; without `--force` DVC refuses to drop the
unrecorded bytes), and `DIR` in use by a training run or another intake (`care.data.lock`).

Otherwise the full new file (old bytes, then one canonical JSON line per new session) is written to a
temporary file in `DIR`, fsynced and renamed over `DIR/sessions.jsonl`, and `dvc add DIR` runs in the
repository root to update `DIR.dvc` and the cache. A failure or an interrupt (Ctrl-C, SIGTERM) after the
rename restores the old `sessions.jsonl` and `DIR.dvc` bytes. A SIGKILL after the rename can leave the new
`sessions.jsonl` with the old `DIR.dvc`: the next add refuses with a clear message and
`dvc checkout DIR --force` brings back the recorded (old) version, which `dvc add` already put in the cache.

Nothing here prints or records transcript or rationale text: messages carry file, line, ids and fields.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence


from care.fsutil import atomic_write_bytes
from care.errors import CareError, InvalidData, Problem, label, sort_problems
from care.data.ids import SPELLING, normalise_id
from care.safe_yaml import load_yaml, load_yaml_file
from care.data.lock import INTAKE_WAIT_S, data_lock
from care.data.reader import read_jsonl
from care.data.schema import Session

SESSIONS_FILE = "sessions.jsonl"
TMP_PREFIX = f".{SESSIONS_FILE}.care-intake."
TMP_SUFFIX = ".tmp"
DVC_TIMEOUT_S = 600

# Runs `dvc ARGS...` in a directory; returns (exit code, combined output). A parameter of add_annotations
# so that tests can make the `dvc add` step fail or be interrupted at a chosen point.
DvcRunner = Callable[[Sequence[str], Path], "tuple[int, str]"]


def run_dvc(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    """Run the DVC of this Python environment (`python -m dvc`) in `cwd`, analytics off."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=DVC_TIMEOUT_S)
    return proc.returncode, proc.stdout


@dataclass
class Tracking:
    """Where `DIR` is tracked: the DVC repository root and the `DIR.dvc` file beside `DIR`."""

    data_dir: Path
    repo_root: Path
    dvc_file: Path

    @property
    def target(self) -> str:
        """`DIR` relative to the repository root, as `dvc add` is given it."""
        return os.path.relpath(self.data_dir, self.repo_root)

    def md5(self) -> str | None:
        return _dvc_md5(self.dvc_file.read_bytes())


@dataclass
class IntakeResult:
    n_added: int
    n_new_clients: int
    n_total: int
    sessions_path: Path
    dvc_file: Path
    old_md5: str | None
    new_md5: str | None


# ------------------------------------------------------------------------------------------------ checks


def find_tracking(data_dir: str | Path) -> Tracking:
    """The DVC tracking of `data_dir`; CareError when it is missing or not tracked by a `DIR.dvc` file."""
    data_dir = Path(data_dir).absolute()
    if not data_dir.is_dir():
        raise CareError(f"{data_dir}: no such data directory")
    root = next((p for p in [data_dir, *data_dir.parents] if (p / ".dvc").is_dir()), None)
    if root is None:
        raise CareError(f"{data_dir} is not inside a DVC repository (no .dvc/ above it); nothing changed")
    dvc_file = data_dir.parent / f"{data_dir.name}.dvc"
    not_tracked = (f"{data_dir} is not tracked by DVC (expected {dvc_file} with an out `{data_dir.name}`); "
                   f"run `dvc add {os.path.relpath(data_dir)}` first; nothing changed")
    if not dvc_file.is_file():
        raise CareError(not_tracked)
    try:
        meta = load_yaml_file(dvc_file, ".dvc file") or {}
    except CareError as exc:
        raise CareError(f"{exc}; nothing changed") from None
    outs = meta.get("outs") if isinstance(meta, dict) else None
    paths = [o.get("path") for o in outs or [] if isinstance(o, dict)]
    if paths != [data_dir.name]:
        raise CareError(not_tracked)
    return Tracking(data_dir=data_dir, repo_root=root, dvc_file=dvc_file)


def _dvc_md5(dvc_bytes: bytes) -> str | None:
    try:
        meta = load_yaml(dvc_bytes.decode("utf-8"), ".dvc file", ".dvc file") or {}
        return meta["outs"][0].get("md5")
    except (CareError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None


def conflict_problems(existing: list[Session], existing_lines: list[int], existing_file: str,
                      new: list[Session], new_lines: list[int], new_file: str) -> list[Problem]:
    """Session ids already present, and client conflicts (see the module docstring), located in `new_file`.

    Ids compare normalised (care.data.ids): an id already present in another spelling (case, spaces,
    invisible characters) is present, and a client or counselor id written differently from the data's is refused."""
    ids: dict[str, tuple[str, int]] = {}
    for s, line in zip(existing, existing_lines):
        ids.setdefault(normalise_id(s.session_id), (s.session_id, line))
    # normalised client -> (counselor_id or None, its line/file), (language, its line/file), (spelling, line/file)
    counselors: dict[str, tuple[str, str]] = {}
    languages: dict[str, tuple[str, str]] = {}
    spellings: dict[str, tuple[str, str]] = {}
    counselor_spellings: dict[str, tuple[str, str]] = {}

    def remember(s: Session, where: str) -> None:
        if s.counselor_id is not None:
            counselor_spellings.setdefault(normalise_id(s.counselor_id), (s.counselor_id, where))
        if s.client_id is None:
            return
        cid = normalise_id(s.client_id)
        spellings.setdefault(cid, (s.client_id, where))
        if s.counselor_id is not None:
            counselors.setdefault(cid, (s.counselor_id, where))
        languages.setdefault(cid, (s.language, where))

    for s, line in zip(existing, existing_lines):
        remember(s, f"{existing_file}:{line}")
    problems: list[Problem] = []
    for s, line in zip(new, new_lines):
        sid = label(s.session_id)
        held_id = ids.get(normalise_id(s.session_id))
        if held_id is not None:
            how = "" if held_id[0] == s.session_id else f" as {label(held_id[0])} ({SPELLING} differ)"
            problems.append(Problem(line, sid, "session_id",
                                    f"session id already present in {existing_file}{how} (line {held_id[1]})",
                                    new_file))
        if s.counselor_id is not None:
            known = counselor_spellings.get(normalise_id(s.counselor_id))
            if known and known[0] != s.counselor_id:
                problems.append(Problem(line, sid, "counselor_id",
                                        f"counselor {label(known[0])} (at {known[1]}) is written differently here "
                                        f"({SPELLING}); use one spelling", new_file))
        if s.client_id is not None:
            cid = normalise_id(s.client_id)
            known = spellings.get(cid)
            if known and known[0] != s.client_id:
                problems.append(Problem(line, sid, "client_id",
                                        f"client {label(known[0])} (at {known[1]}) is written differently here "
                                        f"({SPELLING}): the same client would count as two; use one spelling",
                                        new_file))
            held = counselors.get(cid)
            if held and s.counselor_id is not None and normalise_id(s.counselor_id) != normalise_id(held[0]):
                problems.append(Problem(line, sid, "counselor_id",
                                        f"client {label(s.client_id)} already has sessions with counselor "
                                        f"{label(held[0])} (at {held[1]}), not {label(s.counselor_id)}", new_file))
            lang = languages.get(cid)
            if lang and s.language != lang[0]:
                problems.append(Problem(line, sid, "language",
                                        f"client {label(s.client_id)} already has sessions in language "
                                        f"{label(lang[0])} (at {lang[1]}), not {label(s.language)}", new_file))
        remember(s, f"{new_file}:{line}")
    return sort_problems(problems)


# ------------------------------------------------------------------------------------------------ writing


def _replace_bytes(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace `path` (temp file beside it, fsync, rename), then fsync the directory."""
    atomic_write_bytes(path, data, mode=mode, tmp_prefix=TMP_PREFIX if path.name == SESSIONS_FILE else f".{path.name}.care-intake.")
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the files change, so that the rollback runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_stale_temps(data_dir: Path) -> None:
    """Temp files of an earlier add that was killed before its rename (ours by name; DVC would track them)."""
    for p in data_dir.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _check_clean(tracking: Tracking, dvc: DvcRunner) -> None:
    code, out = dvc(["status", "--json", os.path.relpath(tracking.dvc_file, tracking.repo_root)], tracking.repo_root)
    try:
        status = json.loads(out[out.find("{"):]) if code == 0 and "{" in out else None
    except json.JSONDecodeError:
        status = None
    if status is None:
        raise CareError(f"`dvc status` failed in {tracking.repo_root} (exit {code}): {_tail(out)}; nothing changed")
    if status:
        raise CareError(f"{tracking.target} differs from {tracking.dvc_file.name} (unrecorded changes, or an earlier "
                        f"add that was interrupted): `dvc checkout {tracking.target} --force` restores the recorded "
                        f"version, `dvc add {tracking.target}` records the current one; nothing changed")


def _tail(text: str, n: int = 5) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no output"


# ------------------------------------------------------------------------------------------------ main


def add_annotations(new_path: str | Path, data_dir: str | Path = "data", instrument=None,
                    dvc: DvcRunner = run_dvc, wait_s: float = INTAKE_WAIT_S, limits=None) -> IntakeResult:
    """Validate `new_path`, check it against `data_dir/sessions.jsonl`, append it atomically, `dvc add`.

    Raises InvalidData (every problem) or CareError (one line) when refusing; nothing is changed then. The data
    directory's lock (`care.data.lock`) is held exclusively from the check of the old data to the end: a
    training run on the same data and another intake are refused (or waited for, `wait_s` seconds).
    """
    from care.data.validation import validate_file

    tracking = find_tracking(data_dir)
    sessions_path = tracking.data_dir / SESSIONS_FILE
    if not sessions_path.is_file():
        raise CareError(f"{sessions_path}: no such file (run `dvc pull` or `dvc checkout`); nothing changed")
    new_file = str(new_path)
    if Path(new_path).absolute() == sessions_path:
        raise CareError(f"{new_file} is the data file itself; nothing changed")

    from care.data.validation import _instrument

    instrument = _instrument(instrument)
    result = validate_file(new_path, instrument=instrument, limits=limits, keep_sessions=True)
    if result.problems:
        raise InvalidData(result.problems)

    with data_lock(tracking.data_dir, "care annotations add", exclusive=True, wait_s=wait_s):
        _remove_stale_temps(tracking.data_dir)
        _check_clean(tracking, dvc)
        old_bytes = sessions_path.read_bytes()
        old_dvc = tracking.dvc_file.read_bytes()
        existing = read_jsonl(sessions_path, limits, instrument.item_ids)
        if existing.problems:
            raise CareError(f"{sessions_path} has {len(existing.problems)} problem(s) of its own "
                            f"(see `care validate {sessions_path}`); nothing changed")
        shown = str(Path(data_dir) / SESSIONS_FILE)
        problems = conflict_problems(existing.sessions, existing.lines, shown,
                                     result.sessions, result.lines, new_file)
        if problems:
            raise InvalidData(problems)

        sep = b"" if not old_bytes or old_bytes.endswith(b"\n") else b"\n"
        new_bytes = old_bytes + sep + "".join(s.to_json() + "\n" for s in result.sessions).encode("utf-8")
        mode = sessions_path.stat().st_mode & 0o777
        dvc_mode = tracking.dvc_file.stat().st_mode & 0o777
        replaced = False
        with _sigterm_interrupts():
            try:
                _replace_bytes(sessions_path, new_bytes, mode)
                replaced = True
                code, out = dvc(["add", tracking.target], tracking.repo_root)
                if code != 0:
                    raise CareError(f"`dvc add {tracking.target}` failed (exit {code}): {_tail(out)}; "
                                    f"the old {SESSIONS_FILE} and {tracking.dvc_file.name} were restored")
            except BaseException:
                if replaced:
                    _replace_bytes(sessions_path, old_bytes, mode)
                    if tracking.dvc_file.read_bytes() != old_dvc:
                        _replace_bytes(tracking.dvc_file, old_dvc, dvc_mode)
                raise

    known = {s.client_id for s in existing.sessions}
    return IntakeResult(
        n_added=len(result.sessions),
        n_new_clients=len({s.client_id for s in result.sessions} - known),
        n_total=len(existing.sessions) + len(result.sessions),
        sessions_path=sessions_path,
        dvc_file=tracking.dvc_file,
        old_md5=_dvc_md5(old_dvc),
        new_md5=tracking.md5(),
    )
