"""Step: client-grouped, stratified folds (session ids per fold)."""

from typing import Annotated

from zenml import step

from care.params import CvParams
from care.run.data import DataRef, plan_folds as _plan
from care.run.documents import FoldsPlan
from steps.scratch import step_cache


@step(enable_cache=False)
def plan_folds(data: DataRef, cv: CvParams) -> Annotated[FoldsPlan, "folds"]:
    with step_cache():
        return _plan(data, cv)
