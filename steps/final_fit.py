"""Step: after the gate passed, fine-tune on every session with the same recipe."""

from typing import Annotated

from zenml import step

from care.params import FitParams
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.run.documents import Gate
from care.run.fits import finetune_on
from steps.materializers import ModelDirMaterializer
from steps.scratch import step_cache


@step(enable_cache=False, output_materializers=ModelDirMaterializer)
def final_fit(data: DataRef, fit: FitParams, base: ModelDir, gate: Gate) -> Annotated[ModelDir, "final_model"]:
    gate.raise_if_failed()
    with step_cache():
        return finetune_on(data, None, None, fit, base, desc="final fit")
