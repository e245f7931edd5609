"""Step: fine-tune on every fold but one; the adapter travels as an artifact."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.params import FitParams
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.run.documents import FoldsPlan
from care.run.fits import finetune_on
from steps.materializers import ModelDirMaterializer
from steps.scratch import step_cache


@step(enable_cache=False, output_materializers=ModelDirMaterializer)
def finetune_fold(data: DataRef, folds: FoldsPlan, fold: int, fit: FitParams,
                  base: ModelDir) -> Annotated[ModelDir, ArtifactConfig(name="fold_{fold}_model")]:
    with step_cache():
        return finetune_on(data, folds, fold, fit, base, desc=f"fold {fold + 1}/{folds.n_folds}")
