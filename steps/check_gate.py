"""Step: the Pearson/MSE gate; its document says which checks failed (the final fit refuses to start then)."""

from typing import Annotated

from zenml import log_metadata, step

from care.evaluation.gate import evaluate_gate
from care.params import GateParams


@step(enable_cache=False)
def check_gate(cv_detail: dict, gate: GateParams) -> Annotated[dict, "gate"]:
    doc = evaluate_gate(cv_detail, gate)
    log_metadata(metadata={"gate_passed": bool(doc["passed"])}, infer_model=True)
    return doc
