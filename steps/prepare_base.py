"""Step: the base model (the tiny build, or a real preset's reference)."""

from typing import Annotated

from zenml import step

from care.params import FitParams
from care.run.artifacts import ModelDir
from care.run.fits import prepare_base as _prepare
from care.run.data import DataRef
from steps.materializers import ModelDirMaterializer
from steps.scratch import step_cache


@step(enable_cache=False, output_materializers=ModelDirMaterializer)
def prepare_base(data: DataRef, fit: FitParams) -> Annotated[ModelDir, "base_model"]:
    with step_cache():
        return _prepare(data, fit)
