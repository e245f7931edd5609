"""The files a person looks at after a run (DVC metrics, plots, predictions, the release directory).

They are written by whoever started the run (`care train`), from the run's artifacts, so steps never write
to a shared local disk. They are singletons of a checkout: one run at a time writes them (`outputs_lock`),
and they are checked before any work (`check_outputs`, `check_release_out`: the same checks the writers
make at the end). A release is installed for the length of a block (`installing_release`): the run
registers its version inside it, and a failed registration puts the previous release back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from care.errors import CareError
from care.fsutil import atomic_write_json, atomic_write_lines, cannot_write, check_writable, file_lock
from care.run.documents import CvDetail, FoldsPlan, Gate

LOCK_SUFFIX = ".care-lock"


@dataclass(frozen=True)
class Outputs:
    """Where a run's metrics and plots go."""

    metrics: Path
    plots: Path

    @classmethod
    def at(cls, metrics: str | Path = "metrics", plots: str | Path = "plots") -> "Outputs":
        return cls(Path(metrics).resolve(), Path(plots).resolve())


def write_folds(out: Outputs, folds: FoldsPlan) -> None:
    atomic_write_json(out.metrics / "folds.json", folds.as_json())


def write_cv(out: Outputs, detail: CvDetail, rows: list[dict]) -> None:
    """cv_detail.json, predictions.jsonl and the predicted-vs-client-rated plots."""
    from care.evaluation.plots import write_plots

    atomic_write_json(out.metrics / "cv_detail.json", detail.as_json())
    atomic_write_lines(out.metrics / "predictions.jsonl", [json.dumps(r, sort_keys=True) for r in rows])
    write_plots(rows, out.plots)


def write_gate(out: Outputs, detail: CvDetail, gate: Gate) -> None:
    """gate.json and the summary cv.json (which carries the gate verdict)."""
    from care.run.aggregate import cv_summary

    atomic_write_json(out.metrics / "gate.json", gate.as_json())
    atomic_write_json(out.metrics / "cv.json", cv_summary(detail, gate))


@dataclass(frozen=True)
class Installed:
    """What installing a release did to what `release.out` held: where a changed earlier release was moved."""

    replaced: str | None


def check_release_out(out: str | Path) -> None:
    """Refuse, before any work, a `release.out` that holds something this tool did not write: it must be absent,
    an empty directory or a release package (its manifest's format says so)."""
    from care.fsutil import ours_or_empty
    from care.release.manifest import MANIFEST
    from care.release.package import FORMAT

    try:
        ours = ours_or_empty(out, MANIFEST, lambda m: isinstance(m, dict) and m.get("format") == FORMAT)
    except OSError as exc:
        raise cannot_write(out, exc) from None
    if not ours:
        raise CareError(f"release.out {out}: exists and is not a release package this tool wrote; refusing to "
                        "replace it (move it away or set release.out to another path)")
    check_writable(out)


def check_outputs(out: Outputs) -> None:
    """Refuse, before any work, output paths a run would have to destroy: a metrics file that is not a regular
    file, a plots folder that holds more than plot data."""
    from care.evaluation.plots import DIMENSIONS, PNG_NAME
    from care.fsutil import refuse_non_regular

    for name in ("folds.json", "cv.json", "cv_detail.json", "gate.json", "predictions.jsonl"):
        refuse_non_regular(out.metrics / name)
    refuse_non_regular(out.plots / PNG_NAME)
    check_writable(out.metrics / "cv.json")  # the atomic writers' temporary files go beside them
    check_writable(out.plots / PNG_NAME)
    dims = out.plots / DIMENSIONS
    if os.path.lexists(dims):
        ok = dims.is_dir() and not dims.is_symlink()
        if ok:
            with os.scandir(dims) as it:
                ok = all(e.is_file(follow_symlinks=False) and e.name.endswith(".json") for e in it)
        if not ok:
            raise CareError(f"{dims}: exists and holds more than the plot data this tool writes there; refusing to "
                            "replace it (move it away or choose another --plots-dir)")


@contextlib.contextmanager
def outputs_lock(out: Outputs, release_out: str | Path | None, command: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the run lock of every output a run writes (metrics dir, plots dir, `release.out` unless None), each
    an exclusive `flock` on a hidden sibling `.NAME.care-lock`, waiting up to `wait_s` seconds in all.

    So two runs never write the same metrics, plots or release: the second is refused in one line naming the
    first (command, pid, host, since when). Runs with other outputs run side by side (the cache is shared
    safely, `care.cache`)."""
    paths = sorted({out.metrics, out.plots} | ({Path(release_out).absolute()} if release_out is not None else set()))
    deadline = time.monotonic() + wait_s

    def refusal(path: Path):
        return lambda holder: (f"{path} is being written by {holder}; nothing started. One run at a time writes a "
                               "run's outputs: wait for it (--wait SECONDS) or choose other output paths")

    with contextlib.ExitStack() as stack:
        for path in paths:
            stack.enter_context(file_lock(path.with_name(f".{path.name}{LOCK_SUFFIX}"), command, exclusive=True,
                                          wait_s=max(0.0, deadline - time.monotonic()), refusal=refusal(path)))
        yield


def _is_verified_package(path: Path) -> bool:
    from care.release.manifest import verify_package

    try:
        verify_package(path)
        return True
    except CareError:
        return False


@contextlib.contextmanager
def installing_release(package_dir: str | Path, out: str | Path) -> Iterator[Installed]:
    """Install a verified release package at `out` for the block; it stays only when the block succeeds.

    What `out` held before: nothing, an empty directory or an earlier package that still verifies against its
    manifest is replaced (that package is a registered version's; it is deleted once the block succeeded). An
    earlier package whose files changed (or with files its manifest does not list) is moved aside to
    `OUT.replaced-<time>` and kept; the yielded `Installed.replaced` names it (None when nothing was kept).
    Anything else is refused before any work (`check_release_out`). When the block fails, the new package goes
    and what was there before is put back. An OSError becomes one line naming `out`.
    """
    from care.release.manifest import verify_package

    package_dir, out = Path(package_dir), Path(out).absolute()
    check_release_out(out)
    verify_package(package_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=_parent(out)))
    except OSError as exc:
        raise cannot_write(out, exc) from None
    aside, kept = None, None
    try:
        for src in sorted(package_dir.iterdir()):
            shutil.copyfile(src, tmp / src.name)
        verify_package(tmp)
        if os.path.lexists(out):
            if _is_verified_package(out) or not any(out.iterdir()):
                aside = out.with_name(f".{out.name}.previous-{os.getpid()}")
            else:
                aside = kept = _free_name(out.with_name(f"{out.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}"))
            os.replace(out, aside)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not os.path.lexists(out):
            os.replace(aside, out)
        if isinstance(exc, OSError):
            raise cannot_write(out, exc) from None
        raise
    try:
        yield Installed(str(kept) if kept else None)
    except BaseException:
        failed = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".failed", dir=out.parent))
        os.replace(out, failed / "package")
        if aside is not None:
            os.replace(aside, out)
        shutil.rmtree(failed, ignore_errors=True)
        raise
    if aside is not None and aside != kept:
        shutil.rmtree(aside, ignore_errors=True)


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _free_name(path: Path) -> Path:
    n, candidate = 1, path
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
