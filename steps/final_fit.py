"""Step: after the gate passed, fine-tune on every session with the same recipe."""

from typing import Annotated

from zenml import step

from care.run.crossval import finetune_on


@step(enable_cache=False)
def final_fit(params: dict, gate: dict) -> Annotated[str, "final_model_dir"]:
    return finetune_on(params, None, None, desc="final fit")
