"""Step: mean +/- std over folds (the cross-validation detail) and the held-out predictions."""

from typing import Annotated, Tuple

from zenml import step

from care.params import CvParams, EvalParams, TrainParams
from care.run.aggregate import cv_detail, prediction_rows
from care.run.data import DataRef, load_data
from care.run.documents import CvDetail, FoldMetrics, FoldScores, FoldsPlan
from steps.scratch import step_cache


@step(enable_cache=False)
def aggregate_cv(data: DataRef, folds: FoldsPlan, fold_results: list[FoldMetrics], scored: list[FoldScores],
                 eval: EvalParams, cv: CvParams,
                 train: TrainParams) -> Tuple[Annotated[CvDetail, "cv_detail"], Annotated[list, "predictions"]]:
    with step_cache():
        loaded = load_data(data)  # read, hashed and parsed once for the whole step
        detail = cv_detail(data, fold_results, scored, eval, cv, train, loaded)
        rows = prediction_rows(data, folds, scored, eval.readout, loaded)
    return detail, rows
