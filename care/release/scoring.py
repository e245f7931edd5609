"""`care score` as a use case: score a JSONL file of sessions with a verified release package, as a stream,
resumable after a kill. The CLI parses arguments, calls `score_file` and prints; benchmarks and tests call it
directly.

1. Preflight, before the package is loaded: the options, the input (a readable regular file), and `out` with
   its partial files (`care.fsutil.check_output_file`: not a directory, link, FIFO or device; a parent that
   takes a new file; room on its file system). The final rename runs the same check again.
2. The package is verified and loaded (`load_package`), with its calibration.
3. The input is validated as a stream with `care validate`'s rules (client ratings optional): problems raise
   InvalidData before anything is written; its sha256 and session count are then known.
4. The input is read again one session at a time; each group of `session_batch` sessions is scored, and its
   lines are appended to `.NAME.partial` beside `out` and flushed before the next group is read: memory holds
   one group, whatever the input's size. `.NAME.partial.json` records what the partial belongs to: the input's
   sha256, the package manifest's digest, the options that shape the output and the scoring code's digest.
5. The bytes read the second time must have the validated sha256 (else the partial is deleted: it may hold
   scores of unvalidated data); the partial is synced, `out` checked again, and the partial renamed over it.

A rerun after a kill (or Ctrl-C, or a full disk) finds the partial and its state. When both belong to the same
input, package, options and code, and the partial's complete lines are the input's first sessions in order,
those lines are kept and scoring resumes after them (from a multiple of `session_batch`, so the output is the
bytes of an uninterrupted run); otherwise it says why and starts over. A partial is locked (`flock`) while a
run writes it: a second `care score` to the same `out` is refused.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TextIO

from care.errors import CareError, InvalidData, UsageError
from care.fsutil import FILE_MODE, atomic_write_json, check_output_file, refuse_non_regular

STATE_FORMAT = "care-score-partial/1"
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ScoreOptions:
    """How `care score` scores; every field but `trusted_key` and `progress` can change the output."""

    rationales: bool = False
    device: str = "cpu"
    batch_size: int = 16
    session_batch: int = 1
    max_new_tokens: int = 96
    grounded_quotes: bool | None = None  # None: as the package was released (eval.grounded_quotes)
    trusted_key: Path | None = None
    progress: bool = True

    def check(self) -> None:
        if self.device not in DEVICES:
            raise CareError(f"--device {self.device!r}: expected cpu or cuda")
        for name in ("batch_size", "session_batch", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")


@dataclass
class ScoreSummary:
    """What a `score_file` run did: counts only."""

    n_sessions: int  # lines in the output
    n_resumed: int  # of them, kept from a partial output of an earlier run
    unparsed: int  # item scores whose greedy answer did not parse
    truncated: int  # sessions whose transcript was cut to fit the context
    calibrated: bool  # the output has intervals
    out: Path | None  # None: written to stdout


def partial_paths(out: str | Path) -> tuple[Path, Path]:
    """The partial output beside `out` and its state file."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.partial.json")


def preflight(input_path: str | Path, out: str | Path | None, options: ScoreOptions) -> None:
    """Every check that needs no package, before any work: options, the input file, the output paths."""
    from care.data.reader import open_input

    options.check()
    os.close(open_input(Path(input_path)))
    if out is not None:
        check_output_file(out)
        for path in partial_paths(out):
            refuse_non_regular(path)


def score_file(input_path: str | Path, model: str | Path, out: str | Path | None = None,
               options: ScoreOptions = ScoreOptions(), *, notify: Callable[[str], None] = lambda message: None,
               stdout: TextIO | None = None) -> ScoreSummary:
    """Score every session of `input_path` with the release package `model`; one JSON line per session to
    `out` (atomically, resumable) or, without `out`, to `stdout`. `notify` receives one-line notes (a resume,
    a restart). Raises InvalidData (every problem) or CareError (one line); see the module docstring."""
    from care.cache import source_digest
    from care.data.validation import validate_file
    from care.release.calibration import load_calibration
    from care.release.onnx_runtime import load_package

    input_path, out = Path(input_path), None if out is None else Path(out)
    preflight(input_path, out, options)
    pkg = load_package(model, device=options.device, trusted_key=options.trusted_key)
    calibration = load_calibration(pkg.root, pkg.manifest, pkg.instrument)
    grounded = pkg.scoring.grounded_quotes if options.grounded_quotes is None else options.grounded_quotes
    validated = validate_file(input_path, pkg.instrument, ratings_required=False,
                              progress=None if options.progress else False)
    if validated.problems:
        raise InvalidData(validated.problems)
    shaping = {k: v for k, v in asdict(options).items() if k not in ("trusted_key", "progress")}
    state = {
        "format": STATE_FORMAT,
        "input_sha256": validated.sha256,
        "package_sha256": hashlib.sha256(json.dumps(pkg.manifest, sort_keys=True).encode("utf-8")).hexdigest(),
        "options": {**shaping, "grounded_quotes": grounded},
        "code_sha256": source_digest(__name__),
    }
    job = _Job(input_path, pkg, calibration, options, grounded, validated.sha256, validated.n_sessions)
    if out is None:
        return job.run(_StdoutSink(stdout or sys.stdout))
    with _Partial(out, state, options.session_batch, notify) as partial:
        return job.run(partial)


def _record_counts(record: dict[str, Any]) -> tuple[int, int]:
    """(unparsed greedy item scores, truncated) of one output record."""
    items = record["items"].values() if isinstance(record.get("items"), dict) else ()
    return sum(1 for item in items if item.get("greedy") is None), int(bool(record.get("truncated")))


class _Job:
    """The scoring loop shared by both sinks: sessions streamed from the input, scored a group at a time."""

    def __init__(self, input_path: Path, pkg, calibration, options: ScoreOptions, grounded: bool, sha256: str,
                 n_sessions: int):
        self.input_path, self.pkg, self.calibration, self.options = input_path, pkg, calibration, options
        self.grounded, self.sha256, self.n_sessions = grounded, sha256, n_sessions

    def sessions(self) -> tuple[Any, Iterator]:
        """A fresh stream of the input's sessions (and the stream, whose sha256 is known once it is exhausted)."""
        from care.data.reader import JsonlStream

        stream = JsonlStream(self.input_path, known_keys=self.pkg.instrument.item_ids)

        def parsed() -> Iterator:
            for line in stream:
                if line.session is None:
                    raise _InputChanged(f"{self.input_path}:{line.line}: changed after it was validated")
                yield line.session

        return stream, parsed()

    def run(self, sink: "_StdoutSink | _Partial") -> ScoreSummary:
        import tqdm.auto

        from care.evaluation.readout import iter_scores
        from care.release.onnx_runtime import result_record

        stream, sessions = self.sessions()
        pending, resumed = sink.resume(sessions, self.sessions)
        if sink.restarted:
            stream, sessions = sink.restarted
        n_resumed, unparsed, truncated = resumed
        n = n_resumed
        opts = self.options
        with tqdm.auto.tqdm(total=self.n_sessions, initial=n_resumed, desc="scoring", unit="session",
                            disable=not opts.progress) as bar, sink.discarded_on(_InputChanged):
            for group in iter_scores(self.pkg.lm, self.pkg.builder, itertools.chain(pending, sessions),
                                     eos_ids=self.pkg.eos_ids, batch_size=opts.batch_size, rationales=opts.rationales,
                                     max_new_tokens=opts.max_new_tokens, grounded_quotes=self.grounded,
                                     session_batch=opts.session_batch):
                lines = [json.dumps(result_record(s, self.pkg.instrument, opts.rationales, calibration=self.calibration),
                                    ensure_ascii=False) for s in group]
                sink.write(lines)
                unparsed += sum(1 for s in group for item in s.items.values() if item.greedy is None)
                truncated += sum(s.truncated for s in group)
                n += len(group)
                bar.update(len(group))
            if stream.sha256 != self.sha256:
                raise _InputChanged(f"{self.input_path}: changed while it was scored (sha256 differs from what was "
                                    "validated)")
        return ScoreSummary(n, n_resumed, unparsed, truncated, self.calibration is not None, sink.publish())


class _InputChanged(CareError):
    """The input's bytes differ from those validated: what was scored from them is dropped."""


class _Sink:
    discarded = "nothing written"

    @contextlib.contextmanager
    def discarded_on(self, kind: type[Exception]) -> Iterator[None]:
        """Drop the output when `kind` is raised, and say so in its message."""
        try:
            yield
        except kind as exc:
            self.discard()
            raise type(exc)(f"{exc}; {self.discarded}") from None

    def discard(self) -> None:
        pass


class _StdoutSink(_Sink):
    """Lines to a text stream as they are scored; nothing to resume."""

    restarted = None
    discarded = "the lines printed above are not valid scores"

    def __init__(self, fh: TextIO):
        self.fh = fh

    def resume(self, sessions: Iterator, reopen: Callable) -> tuple[list, tuple[int, int, int]]:
        return [], (0, 0, 0)

    def write(self, lines: list[str]) -> None:
        self.fh.write("".join(line + "\n" for line in lines))
        self.fh.flush()

    def publish(self) -> None:
        return None


class _Partial(_Sink):
    """The partial output beside `out` and its state file, locked while this run writes them."""

    def __init__(self, out: Path, state: dict[str, Any], group: int, notify: Callable[[str], None]):
        self.out, self.state, self.group, self.notify = out, state, group, notify
        self.path, self.state_path = partial_paths(out)
        self.restarted: tuple | None = None
        self.fh: BinaryIO | None = None

    def __enter__(self) -> "_Partial":
        refuse_non_regular(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise CareError(f"{self.path}: cannot write ({exc.strerror or type(exc).__name__})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CareError(f"{self.path}: not a regular file; refusing to write the partial output there")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CareError(f"{self.out}: another `care score` is writing it (its partial output {self.path} is "
                                "locked); wait for it, or choose another --out") from None
            os.fchmod(fd, FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
        self.fh = os.fdopen(fd, "r+b")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()  # releases the lock; the partial stays for a rerun unless published or discarded

    # -- resume

    def _state_on_disk(self) -> dict | None:
        from care.fsutil import open_regular

        try:
            with os.fdopen(open_regular(self.state_path), "rb") as fh:
                doc = json.loads(fh.read(1 << 20).decode("utf-8"))
        except (OSError, CareError, UnicodeDecodeError, ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None

    def _mismatch(self, old: dict | None) -> str | None:
        if old is None:
            return "has no readable state file"
        if old.get("format") != STATE_FORMAT:
            return "was written by another version of care score"
        for key, what in (("input_sha256", "another input (or the input changed)"),
                          ("package_sha256", "another release package"),
                          ("options", "other options"),
                          ("code_sha256", "another version of the scoring code")):
            if old.get(key) != self.state.get(key):
                return f"belongs to {what}"
        return None

    def resume(self, sessions: Iterator, reopen: Callable) -> tuple[list, tuple[int, int, int]]:
        """Keep what an earlier run of the same job scored: (sessions to score again before `sessions`, (lines
        kept, their unparsed item scores, their truncated sessions)). Else start over (`self.restarted` then
        holds a fresh stream of the input)."""
        size = os.fstat(self.fh.fileno()).st_size
        old = self._state_on_disk()
        if size == 0 and old is None:
            return self._start_over(None, reopen, fresh=True)
        reason = self._mismatch(old)
        if reason is None and size:
            kept = self._matching_prefix(sessions)
            if kept is None:
                reason = "does not hold the input's first sessions in order"
            else:
                return kept
        if reason is not None:
            return self._start_over(reason, reopen)
        return [], (0, 0, 0)  # same job, nothing scored yet

    def _matching_prefix(self, sessions: Iterator):
        """Compare the partial's complete lines with the input's first sessions, and truncate it after the last
        whole group of `group` lines: (sessions of the cut group, counts of the lines kept), as `resume` returns.
        None when a line is not the record of the input's next session."""
        fh = self.fh
        fh.seek(0)
        window: collections.deque = collections.deque(maxlen=self.group)  # (start, unparsed, truncated, session)
        n = unparsed = truncated = offset = 0
        for raw in iter(fh.readline, b""):
            if not raw.endswith(b"\n"):
                break  # the last line, cut by the kill
            session = next(sessions, None)
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                return None
            if session is None or not isinstance(record, dict) or record.get("session_id") != session.session_id:
                return None
            u, t = _record_counts(record)
            window.append((offset, u, t, session))
            offset += len(raw)
            n, unparsed, truncated = n + 1, unparsed + u, truncated + t
        redo = list(window)[len(window) - n % self.group:] if n % self.group else []
        for _, u, t, _ in redo:
            n, unparsed, truncated = n - 1, unparsed - u, truncated - t
        keep = redo[0][0] if redo else offset
        fh.truncate(keep)
        fh.seek(keep)
        if n:
            self.notify(f"resuming: {n} session(s) already scored in {self.path} are kept")
        return [s for *_, s in redo], (n, unparsed, truncated)

    def _start_over(self, reason: str | None, reopen: Callable, fresh: bool = False):
        if reason is not None:
            self.notify(f"starting over: the partial output {self.path} {reason}")
        self.fh.truncate(0)
        self.fh.seek(0)
        atomic_write_json(self.state_path, self.state)
        if not fresh:
            self.restarted = reopen()
        return [], (0, 0, 0)

    # -- writing

    def write(self, lines: list[str]) -> None:
        try:
            self.fh.write("".join(line + "\n" for line in lines).encode("utf-8"))
            self.fh.flush()
        except OSError as exc:
            raise CareError(f"{self.out}: cannot write ({exc.strerror or type(exc).__name__}); the sessions scored so "
                            f"far are kept in {self.path}: rerun to resume") from None

    def discard(self) -> None:
        for path in (self.path, self.state_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def publish(self) -> Path:
        """Sync the partial and rename it over `out` (checked again first); the state file goes."""
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError as exc:
            raise CareError(f"{self.out}: cannot write ({exc.strerror or type(exc).__name__}); the scored sessions "
                            f"are kept in {self.path}: rerun to finish") from None
        check_output_file(self.out, room=0)
        try:
            os.replace(self.path, self.out)
        except OSError as exc:
            raise CareError(f"{self.out}: cannot write ({exc.strerror or type(exc).__name__})") from None
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass
        return self.out

