"""Step: metrics of one held-out fold for the model and the baselines."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.run.crossval import fold_metrics as _fold_metrics


@step(enable_cache=False)
def fold_metrics(params: dict, folds: dict, fold: int, scored: dict) -> Annotated[dict, ArtifactConfig(name="fold_{fold}_metrics")]:
    return _fold_metrics(params, folds, fold, scored)
