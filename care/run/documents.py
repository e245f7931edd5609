"""The documents a run's steps hand each other, and what `run_training` returns: typed, frozen, JSON.

Each model dumps (`model_dump(mode="json")`) to exactly the JSON the run writes or caches: the same keys in
the same order, numbers kept as they came (an int stays an int). A key the run writes only when it has a
value (`zero_shot`, a check's `baseline`) is left out when None (`Document.omitted_when_none`). Deep numeric
trees the evaluation builds (per-dimension metrics, baselines, intervals) stay JSON mappings.

ZenML stores these as JSON (its pydantic materializer), never a pickle.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, model_serializer

Number = Union[int, float]  # an int stays an int (pydantic's float would make 3 into 3.0)
Scores = dict[str, dict[str, Union[Number, None]]]  # session id -> item id -> score (None: unparsed)
Tree = dict[str, Any]  # numbers and names only, as care.evaluation builds them


class Document(BaseModel):
    """A step's JSON document: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")  # NaN stays NaN, as json.dumps
    omitted_when_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler):
        out = handler(self)
        for key in self.omitted_when_none:
            if out.get(key, 0) is None:
                del out[key]
        return out

    def as_json(self) -> dict:
        """The document as the run writes it (metrics files, registry metadata, cache entries)."""
        return self.model_dump(mode="json")


# ------------------------------------------------------------------------------ folds


class Fold(Document):
    fold: int
    n_sessions: int
    sessions: list[str]  # held-out session ids, sorted
    clients: int


class FoldsPlan(Document):
    """`metrics/folds.json` (care.data.folds.folds_document): session ids per fold, no text."""

    n_folds: int
    seed: int
    folds: list[Fold]

    def held_out(self, k: int) -> list[str]:
        """The session ids fold `k` holds out."""
        return list(self.folds[k].sessions)

    def session_ids(self) -> list[list[str]]:
        """Every fold's held-out session ids, in fold order."""
        return [list(f.sessions) for f in self.folds]


# ------------------------------------------------------------------------------ one fold


class Transcripts(Document):
    sessions: int
    truncated: int
    mean_tokens: Number | None


class DigitMass(Document):
    """Probability on the scale digits at the answer position: mean and minimum over items."""

    mean: Number | None
    min: Number | None


class ZeroShot(Document):
    predictions: Scores
    unparsed: int


class FoldScores(Document):
    """`score_fold`: fold `k` scored by its fine-tuned model (both readouts), and by the zero-shot base when asked."""

    omitted_when_none: ClassVar[frozenset[str]] = frozenset({"zero_shot"})

    fold: int
    transcripts: Transcripts
    predictions: dict[str, Scores]  # readout -> scores
    spread: dict[str, dict[str, Union[Number, None]]]  # session -> item -> sd of its digit distribution
    unparsed: dict[str, int]  # readout -> unparsed items
    digit_mass: DigitMass
    rationale_quality: Tree | None
    train: Tree  # the fit's training stats (care.run.fits.fit_record)
    examples: dict[str, Number]
    zero_shot: ZeroShot | None = None


class RunWarning(Document):
    """A check that says a fold or the run learned little (care.evaluation.diagnostics)."""

    scope: str  # "fold k" or "cv"
    check: str
    dimension: str | None
    value: Number | None
    threshold: Number | None
    message: str


class FoldMetrics(Document):
    """`fold_metrics`: the model's and the baselines' metrics on fold `k` (care.evaluation.metrics.evaluate)."""

    fold: int
    model: Tree
    prediction_sd: dict[str, Union[Number, None]]
    transcripts: Transcripts
    warnings: list[RunWarning]
    readouts: dict[str, Tree]
    baselines: dict[str, Tree]
    unparsed: int
    unparsed_by_readout: dict[str, int]
    digit_mass: DigitMass
    rationale_quality: Tree | None
    train: Tree
    examples: dict[str, Number]


# ------------------------------------------------------------------------------ the run


class CvTranscripts(Document):
    sessions: int
    truncated: int
    truncated_share: Number
    mean_tokens: Number | None


class CvDetail(Document):
    """`metrics/cv_detail.json` (care.run.aggregate.cv_detail): every number of the cross-validation."""

    n_folds: int
    n_sessions: int
    mean: dict[str, Tree]  # dimension -> metric -> value
    std: dict[str, Tree]
    n: dict[str, Any]
    baselines: dict[str, dict[str, Tree]]  # baseline -> dimension -> metric -> value
    baselines_std: dict[str, Any]
    baselines_n: dict[str, Any]
    baselines_items: dict[str, Any]
    items: Tree
    unparsed: int
    targets: str
    folds: list[Tree]
    readout: str
    readouts: dict[str, Tree]
    unparsed_by_readout: dict[str, int]
    digit_mass: DigitMass
    rationale_quality: Tree | None
    intervals: Tree | None
    examples: dict[str, Number]
    transcripts: CvTranscripts
    train_seconds: Number
    seed: dict[str, int]
    targets_requested: str
    score_only_fallback_share: Number
    prediction_sd: dict[str, Union[Number, None]]
    warnings: list[RunWarning]


class GateCheck(Document):
    omitted_when_none: ClassVar[frozenset[str]] = frozenset({"baseline"})

    check: str
    dimension: str | None
    metric: str | None
    value: Number | None
    threshold: Number | None
    baseline: str | None = None  # the baseline a comparison check beats
    verdict: str  # "pass" or "fail"


class NotApplied(Document):
    check: str
    baseline: str
    dimension: str
    reason: str


class Gate(Document):
    """`metrics/gate.json` (care.evaluation.gate.evaluate_gate): the verdict and every check."""

    passed: bool
    checks: list[GateCheck]
    failed: list[str]
    not_applied: list[NotApplied]
    loosened: list[str]

    def raise_if_failed(self) -> None:
        """Raise `GateFailed` naming every failed check (care.evaluation.gate.raise_if_failed)."""
        from care.evaluation.gate import raise_if_failed

        raise_if_failed(self.as_json())


class Registration(Document):
    """The model version a run registered, and the stage it was put in (None until staged)."""

    model: str
    version: int
    stage: str | None


class RunResult(Document):
    """What `pipelines.training.run_training` returns."""

    run: str
    status: str  # ZenML's run status: completed, failed, ...
    failed_steps: list[str]
    gate: Gate | None  # None: the run did not get to the gate
    registration: Registration | None
    error: str | None  # the exception type that ended the run, if any
    interrupted: bool  # Ctrl-C or SIGTERM
    warnings: list[RunWarning]
    replaced: str | None  # where an earlier, changed release was moved

    @property
    def cv_warnings(self) -> list[RunWarning]:
        """The warnings on the whole run (scope "cv"), not on single folds."""
        return [w for w in self.warnings if w.scope == "cv"]
