"""Step: score the held-out fold with the fine-tuned model and the zero-shot base (numbers only)."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.run.crossval import score_fold as _score_fold


@step(enable_cache=False)
def score_fold(params: dict, folds: dict, fold: int, model_dir: str) -> Annotated[dict, ArtifactConfig(name="fold_{fold}_predictions")]:
    return _score_fold(params, folds, fold, model_dir)
