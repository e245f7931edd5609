"""Run parameters: params.yaml (every knob of a run), `--set KEY=VALUE` overrides, and a stable digest."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from care.errors import UsageError, label


Count = Annotated[int, Field(ge=1)]  # sizes, steps, batches: at least 1
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    """A params section: unknown keys, NaN and infinity are refused (with the key's path in the message)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataParams(_Section):
    path: str = "data/sessions.jsonl"
    instrument: str = "wai-sr"
    limit: Count | None = None  # keep the first N sessions (CI-sized runs)


class TinyParams(_Section):
    vocab_size: Count = 2048
    hidden_size: Count = 128
    intermediate_size: Count = 344
    layers: Count = 2
    heads: Count = 4
    max_position: Count = 4096
    pretrain_sessions: Count = 300
    pretrain_steps: Count = 200
    pretrain_lr: Positive = 3e-3
    pretrain_batch: Count = 8
    pretrain_window: Count = 256  # tokens per pretraining row (windows of the documents)
    seed: int = 7


class ModelParams(_Section):
    preset: Literal["tiny", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct"] = "tiny"
    base: str | None = None  # hub id or local path for the real presets (default: the preset's hub id)
    finetune: Literal["lora", "full"] = "lora"
    max_length: Count = 1024
    target_tokens: Count = 128  # room kept after each prompt for the target (score + rationale); longer is clipped
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool | None = None  # None: on for real presets, off for tiny
    # the date every chat template sees (Llama 3.1 writes "Today Date" into the system prompt): fixed, so
    # prompts, cache keys and scores do not change from one day to the next
    prompt_date: date = date(2024, 7, 26)
    tiny: TinyParams = TinyParams()


class LoraParams(_Section):
    r: Count = 16
    alpha: Count = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainParams(_Section):
    targets: Literal["rationale", "score_only"] = "rationale"
    packing: Literal["item", "session"] = "item"
    epochs: Positive = 1
    max_steps: Count | None = None
    lr: Positive = 3e-3
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: Share = 0.1
    # item layout: examples per micro-batch (with share_prefix, half a session's 12 items); session layout:
    # a step holds whole sessions, about batch_size x grad_accum items
    batch_size: Count = 6
    grad_accum: Count = 4
    weight_decay: NonNegative = 0.0
    max_grad_norm: Positive = 1.0
    # encode a session's transcript once per batch and reuse its key/value cache for the batch's items
    # (same loss as separate examples; batches then never mix sessions). Item layout only; off under
    # gradient checkpointing.
    share_prefix: bool = True
    # weight of the score digit (the first target token) against each rationale token in the loss; 1 is
    # plain token-mean cross-entropy (the paper); with score_only targets it weighs the digit against EOS.
    score_weight: Positive = 30.0
    seed: int = 123
    # processes that share each fine-tune (DDP under `accelerate launch`: one per GPU; gloo on CPU). A step
    # holds the same micro-batches whatever the count (rounded up to a multiple of it), split over them.
    num_processes: Count = 1


class CvParams(_Section):
    folds: int = Field(5, ge=2)
    seed: int = 123


class WarningParams(_Section):
    """When a run says it learned nothing (care.evaluation.diagnostics); each fold and the aggregate are checked."""

    min_digit_mass: Share = 0.5  # mean probability on the scale digits at the answer position
    min_prediction_sd: NonNegative = 0.05  # spread of the predicted dimension scores over held-out sessions
    max_truncated_share: Share = 0.25  # share of transcripts cut to fit the context


class EvalParams(_Section):
    readout: Literal["expected", "greedy"] = "expected"
    zero_shot: bool = True
    rationale_sample: Annotated[int, Field(ge=0)] = 24
    rationale_max_new_tokens: Count = 96
    batch_size: Count = 16
    # baselines on the same folds besides counselor / train_mean / zero_shot: TF-IDF + ridge on the
    # transcript (`tfidf`), and a helper-side item mapped to a dimension (`helper_proxy`, e.g. ESConv's
    # {supporter_detail: [task, bond]}); never a counselor rating of the instrument's items
    text_baseline: bool = True
    helper_proxy: dict[str, str | list[str]] = {}
    warnings: WarningParams = WarningParams()


class GateParams(_Section):
    """Release gate on the cross-validated means (see care.evaluation.gate). Keys are dimensions; "*" applies to
    every dimension in cv_detail.json not named explicitly. A named dimension missing from it fails."""

    min_pearson: dict[str, float] = {"*": 0.3}
    max_mse: dict[str, float] = {"*": 1.0}
    beat_on_pearson: list[str] = ["counselor"]  # model mean pearson > baseline mean pearson, per dimension
    beat_on_mse: list[str] = ["train_mean"]  # model mean mse < baseline mean mse, per dimension


class ReleaseParams(_Section):
    out: str = "release"
    parity_sessions: Count = 3
    max_logit_diff: NonNegative = 1e-3
    max_score_diff: NonNegative = 1e-3
    merge_max_logit_diff: NonNegative = 1e-3
    export_device: Literal["cpu", "cuda"] = "cpu"  # cuda: fp16 ONNX, parity against the fp16 thresholds below
    fp16_max_logit_diff: NonNegative = 0.1
    fp16_max_score_diff: NonNegative = 0.02
    score_batch_size: Count = 16  # item prompts per batch over a shared transcript cache (care score)


class RegistryParams(_Section):
    model_name: str = "care-alliance"
    stage_on_pass: Literal["staging", "none"] = "staging"


class FitParams(_Section):
    """The sections that decide a fine-tuned model: what the fine-tune steps receive and its cache key hashes."""

    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()


class Params(_Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    cv: CvParams = CvParams()
    eval: EvalParams = EvalParams()
    gate: GateParams = GateParams()
    release: ReleaseParams = ReleaseParams()
    registry: RegistryParams = RegistryParams()

    @property
    def fit(self) -> FitParams:
        return FitParams(data=self.data, model=self.model, lora=self.lora, train=self.train)

    def digest(self, *sections: str) -> str:
        """sha256 over the canonical JSON of the given sections (all when none are named)."""
        dump = self.model_dump(mode="json")
        if sections:
            dump = {k: dump[k] for k in sections}
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise UsageError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.targets=score_only")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UsageError(f"--set {key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError):
        raise UsageError(f"--set {label(key.strip(), 80)}: the value is not valid YAML") from None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params (a missing default file means all defaults) and apply `KEY=VALUE` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            try:
                tree = yaml.safe_load(p.read_text("utf-8")) or {}
            except yaml.YAMLError:
                raise UsageError(f"{p}: not valid YAML") from None
        elif str(path) != "params.yaml":
            raise UsageError(f"{p}: params file not found")
    tree = copy.deepcopy(tree)
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise UsageError(f"{path or 'params'}: " + "; ".join(lines)) from None
