"""The files a person looks at after a run (DVC metrics, plots, predictions, the release directory).

They are written by whoever started the run (`care train`), from the run's artifacts, so steps never write
to a shared local disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from care.errors import CareError
from care.fsutil import atomic_write_json, atomic_write_lines


@dataclass(frozen=True)
class Outputs:
    """Where a run's metrics and plots go."""

    metrics: Path
    plots: Path

    @classmethod
    def at(cls, metrics: str | Path = "metrics", plots: str | Path = "plots") -> "Outputs":
        return cls(Path(metrics).resolve(), Path(plots).resolve())


def write_folds(out: Outputs, folds_doc: dict) -> None:
    atomic_write_json(out.metrics / "folds.json", folds_doc)


def write_cv(out: Outputs, detail: dict, rows: list[dict]) -> None:
    """cv_detail.json, predictions.jsonl and the predicted-vs-client-rated plots."""
    from care.evaluation.plots import write_plots

    atomic_write_json(out.metrics / "cv_detail.json", detail)
    atomic_write_lines(out.metrics / "predictions.jsonl", [json.dumps(r, sort_keys=True) for r in rows])
    write_plots(rows, out.plots)


def write_gate(out: Outputs, detail: dict, gate_doc: dict) -> None:
    """gate.json and the summary cv.json (which carries the gate verdict)."""
    from care.run.report import cv_summary

    atomic_write_json(out.metrics / "gate.json", gate_doc)
    atomic_write_json(out.metrics / "cv.json", cv_summary(detail, gate_doc))


def check_release_out(out: str | Path) -> None:
    """Refuse, before any work, a `release.out` that holds something this tool did not write: it must be absent,
    an empty directory or a release package (its manifest's format says so)."""
    from care.fsutil import ours_or_empty
    from care.release.manifest import MANIFEST
    from care.release.package import FORMAT

    if not ours_or_empty(out, MANIFEST, lambda m: isinstance(m, dict) and m.get("format") == FORMAT):
        raise CareError(f"release.out {out}: exists and is not a release package this tool wrote; refusing to "
                        "replace it (move it away or set release.out to another path)")


def check_outputs(out: Outputs) -> None:
    """Refuse, before any work, output paths a run would have to destroy: a metrics file that is not a regular
    file, a plots folder that holds more than plot data."""
    from care.evaluation.plots import DIMENSIONS, PNG_NAME
    from care.fsutil import refuse_non_regular

    for name in ("folds.json", "cv.json", "cv_detail.json", "gate.json", "predictions.jsonl"):
        refuse_non_regular(out.metrics / name)
    refuse_non_regular(out.plots / PNG_NAME)
    dims = out.plots / DIMENSIONS
    if os.path.lexists(dims):
        ok = dims.is_dir() and not dims.is_symlink()
        if ok:
            with os.scandir(dims) as it:
                ok = all(e.is_file(follow_symlinks=False) and e.name.endswith(".json") for e in it)
        if not ok:
            raise CareError(f"{dims}: exists and holds more than the plot data this tool writes there; refusing to "
                            "replace it (move it away or choose another --plots-dir)")


def install_release(package_dir: str | Path, out: str | Path) -> Path:
    """Copy a verified release package to `out` (replaced atomically), and verify the copy.

    An existing `out` is replaced only when it is an empty directory or an earlier release package;
    anything else there is left alone and the install refused.
    """
    import shutil

    from care.fsutil import atomic_dir
    from care.release.manifest import verify_package

    package_dir, out = Path(package_dir), Path(out)
    check_release_out(out)
    verify_package(package_dir)
    with atomic_dir(out) as tmp:
        for src in sorted(package_dir.iterdir()):
            shutil.copyfile(src, tmp / src.name)
        verify_package(tmp)
    return Path(out).resolve()
