"""Step: the Pearson/MSE gate; its document says which checks failed (the final fit refuses to start then)."""

from typing import Annotated

from zenml import step

from care.evaluation.gate import evaluate_gate
from care.params import GateParams


@step(enable_cache=False)
def check_gate(cv_detail: dict, gate: GateParams) -> Annotated[dict, "gate"]:
    return evaluate_gate(cv_detail, gate)
