"""Step: client-grouped, stratified folds (session ids per fold)."""

from typing import Annotated

from zenml import step

from care.data.folds import plan_folds as _plan
from care.params import CvParams
from care.run.data import DataRef, load_data
from steps.scratch import step_cache


@step(enable_cache=False)
def plan_folds(data: DataRef, cv: CvParams) -> Annotated[dict, "folds"]:
    with step_cache():
        sessions, instrument = load_data(data)
        return _plan(sessions, instrument, cv.folds, cv.seed)
