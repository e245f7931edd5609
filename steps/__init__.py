"""Thin ZenML steps, one per file, re-exported here (importing this registers the ModelDir materializer)."""

from pathlib import Path

from zenml.utils import source_utils

# ZenML imports steps and materializers by module path from the project root, however `care` was started
# (a console script, `python -c`, a notebook); decorating a step with a materializer already needs it.
source_utils.set_custom_source_root(str(Path(__file__).resolve().parents[1]))

from steps.aggregate_cv import aggregate_cv  # noqa: E402
from steps.build_release import build_release
from steps.check_gate import check_gate
from steps.final_fit import final_fit
from steps.finetune_fold import finetune_fold
from steps.fold_metrics import fold_metrics
from steps.materializers import ModelDirMaterializer
from steps.plan_folds import plan_folds
from steps.prepare_base import prepare_base
from steps.register import register_release
from steps.score_fold import score_fold
from steps.validate_data import validate_data

__all__ = [
    "ModelDirMaterializer", "aggregate_cv", "build_release", "check_gate", "final_fit", "finetune_fold",
    "fold_metrics", "plan_folds", "prepare_base", "register_release", "score_fold", "validate_data",
]
