"""Step: merge, export to ONNX, check parity, and write the release package; returns its directory."""

from typing import Annotated

from zenml import log_metadata, step

from care.run.crossval import params_of
from care.release.build import build_release as _build_release


@step(enable_cache=False)
def build_release(params: dict, model_dir: str, cv_metrics: dict, gate: dict, data_summary: dict) -> Annotated[str, "release_dir"]:
    out = _build_release(params_of(params), model_dir, cv_metrics, gate, data_summary)
    log_metadata(metadata={"release_dir": out}, infer_model=True)
    return out
