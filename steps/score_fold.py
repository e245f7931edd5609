"""Step: score the held-out fold with the fine-tuned model and the zero-shot base (numbers only)."""

from typing import Annotated

from zenml import ArtifactConfig, step

from care.params import CvParams, EvalParams, FitParams
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.run.documents import FoldScores, FoldsPlan
from care.run.fold_eval import score_fold as _score
from steps.scratch import step_cache


@step(enable_cache=False)
def score_fold(data: DataRef, folds: FoldsPlan, fold: int, fit: FitParams, eval: EvalParams, cv: CvParams,
               model: ModelDir,
               base: ModelDir) -> Annotated[FoldScores, ArtifactConfig(name="fold_{fold}_predictions")]:
    with step_cache():
        return _score(data, folds, fold, fit, eval, model, base, cv.seed)
