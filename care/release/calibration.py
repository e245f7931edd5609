"""The package's interval calibration (`calibration.json`): written by the release, read by `care score`.

It holds numbers only (care.evaluation.intervals.calibrate: the method, levels, scale and one radius per
dimension, item and level). It is read from bytes checked against the manifest's sha256, and refused when it
does not fit the package's instrument.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from care.data.instrument import Instrument
from care.errors import CareError
from care.evaluation.intervals import check_calibration

CALIBRATION_FILE = "calibration.json"


def write_calibration(directory: str | Path, calibration: Mapping[str, Any]) -> Path:
    path = Path(directory) / CALIBRATION_FILE
    path.write_text(json.dumps(calibration, indent=2, sort_keys=True) + "\n", "utf-8")
    return path


def load_calibration(root: str | Path, manifest: Mapping[str, Any], instrument: Instrument) -> dict[str, Any] | None:
    """The package's calibration, or None when the package has none (built before intervals existed)."""
    entry = (manifest.get("files") or {}).get(CALIBRATION_FILE)
    if entry is None:
        return None
    path = Path(root) / CALIBRATION_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CareError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
        raise CareError(f"{path}: sha256 does not match the manifest")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CareError(f"{path}: not valid JSON") from None
    return check_calibration(doc, instrument, str(path))
