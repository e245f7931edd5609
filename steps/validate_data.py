"""Step: validate the data once (Great Expectations) and record its sha256 for every later step."""

from typing import Annotated

from zenml import step

from care.params import DataParams
from care.run.data import DataRef, validate_data as _validate
from steps.scratch import step_cache


@step(enable_cache=False)
def validate_data(data: DataParams) -> Annotated[DataRef, "data"]:
    with step_cache():
        return _validate(data)
