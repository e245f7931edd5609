"""Step: metrics of one held-out fold for the model and the baselines."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.params import EvalParams
from care.run.data import DataRef
from care.run.documents import FoldMetrics, FoldScores, FoldsPlan
from care.run.fold_eval import fold_metrics as _metrics
from steps.scratch import step_cache


@step(enable_cache=False)
def fold_metrics(data: DataRef, folds: FoldsPlan, fold: int, eval: EvalParams,
                 scored: FoldScores) -> Annotated[FoldMetrics, ArtifactConfig(name="fold_{fold}_metrics")]:
    with step_cache():
        return _metrics(data, folds, fold, eval, scored)
