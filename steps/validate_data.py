"""Step: validate the annotation data (Great Expectations rules) and summarise it (counts, sha256)."""

from typing import Annotated

from zenml import step

from care.run.crossval import data_summary


@step(enable_cache=False)
def validate_data(params: dict) -> Annotated[dict, "data_summary"]:
    return data_summary(params)
