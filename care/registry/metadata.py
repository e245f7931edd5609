"""What a model version records about itself: numbers and ids only, never client text."""

from __future__ import annotations

from typing import Any


def cv_metadata(cv: dict) -> dict[str, Any]:
    """Cross-validation results for the registry: mean and std per dimension, baselines, counts."""
    return {
        "cv": {"mean": cv["mean"], "std": cv["std"], "n_folds": cv["n_folds"], "n_sessions": cv["n_sessions"]},
        "baselines": cv["baselines"],
        "targets": cv["targets"],
        "readout": cv.get("readout"),
        "unparsed": cv["unparsed"],
    }
