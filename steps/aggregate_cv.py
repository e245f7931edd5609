"""Step: mean +/- std over folds (metrics/cv.json, predictions, plots), logged on the model version."""

from typing import Annotated

from zenml import log_metadata, step

from care.run.crossval import aggregate
from care.registry.metadata import cv_metadata
from care.run.workspace import Outputs


@step(enable_cache=False)
def aggregate_cv(params: dict, outputs: dict, folds: dict, fold_results: list, scored: list) -> Annotated[dict, "cv_metrics"]:
    cv = aggregate(params, folds, fold_results, scored, Outputs(**outputs))
    log_metadata(metadata=cv_metadata(cv), infer_model=True)
    return cv
