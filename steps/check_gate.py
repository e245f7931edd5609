"""Step: the Pearson/MSE gate; its document says which checks failed (the final fit refuses to start then)."""

from typing import Annotated

from zenml import step

from care.params import GateParams
from care.run.aggregate import check_gate as _check
from care.run.documents import CvDetail, Gate


@step(enable_cache=False)
def check_gate(cv_detail: CvDetail, gate: GateParams) -> Annotated[Gate, "gate"]:
    return _check(cv_detail, gate)
