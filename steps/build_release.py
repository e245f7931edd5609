"""Step: merge, export to ONNX, check parity and write the release package; the package travels as an artifact."""

from typing import Annotated

from zenml import step

from care.params import Params
from care.run.release import build_release as _build
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.run.documents import CvDetail, Gate
from steps.materializers import ModelDirMaterializer
from steps.scratch import step_cache


@step(enable_cache=False, output_materializers=ModelDirMaterializer)
def build_release(params: Params, data: DataRef, model: ModelDir, base: ModelDir, cv_detail: CvDetail,
                  gate: Gate) -> Annotated[ModelDir, "release_package"]:
    with step_cache():
        return _build(params, data, model, base, cv_detail, gate)
