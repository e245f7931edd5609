"""Step: fine-tune on every fold but one; returns the directory of the saved adapter (safetensors)."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.run.crossval import finetune_on


@step(enable_cache=False)
def finetune_fold(params: dict, folds: dict, fold: int) -> Annotated[str, ArtifactConfig(name="fold_{fold}_model_dir")]:
    return finetune_on(params, folds, fold, desc=f"fold {fold + 1}/{folds['n_folds']}")
