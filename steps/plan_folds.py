"""Step: client-grouped, stratified folds (writes metrics/folds.json)."""

from typing import Annotated

from zenml import step

from care.run.crossval import plan_folds as _plan_folds
from care.run.workspace import Outputs


@step(enable_cache=False)
def plan_folds(params: dict, outputs: dict, data_summary: dict) -> Annotated[dict, "folds"]:
    return _plan_folds(params, Outputs(**outputs))
