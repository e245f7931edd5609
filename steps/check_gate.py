"""Step: the Pearson/MSE gate (metrics/gate.json); fails the run, naming every failed check."""

from typing import Annotated

from zenml import log_metadata, step

from care.run.crossval import gate, require_gate
from care.run.workspace import Outputs


@step(enable_cache=False)
def check_gate(params: dict, outputs: dict, cv_metrics: dict) -> Annotated[dict, "gate"]:
    doc = gate(params, cv_metrics, Outputs(**outputs))
    log_metadata(metadata={"gate_passed": bool(doc["passed"])}, infer_model=True)
    require_gate(doc)
    return doc
