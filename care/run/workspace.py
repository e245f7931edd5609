"""Where a run keeps its work: the cache of built base models and finished folds, and the output paths.

Cache entries are keyed by content (data, fold membership, the params sections that matter, the code), so
a rerun with nothing changed reuses finished folds and a change anywhere retrains what it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CODE_FILES = ("prompts.py", "tiny.py", "base_models.py", "training.py", "scoring.py", "packing.py", "schema.py")


def cache_root() -> Path:
    """`$CARE_CACHE_DIR`, else `.care/cache` under the current directory."""
    return Path(os.environ.get("CARE_CACHE_DIR") or Path.cwd() / ".care" / "cache").resolve()


def code_digest() -> str:
    """sha256 over the source of the modules that decide what a trained model is."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in _CODE_FILES:
        path = here / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Outputs:
    """Where a run writes the files people look at (DVC metrics and plots)."""

    metrics: Path
    plots: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", Path(self.metrics))
        object.__setattr__(self, "plots", Path(self.plots))

    @classmethod
    def at(cls, metrics: str | Path = "metrics", plots: str | Path = "plots") -> "Outputs":
        return cls(Path(metrics).resolve(), Path(plots).resolve())
