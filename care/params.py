"""Run parameters: params.yaml (every knob of a run), `--set KEY=VALUE` overrides, and a stable digest."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from care.errors import UsageError, label
from care.safe_yaml import load_yaml, load_yaml_file


Count = Annotated[int, Field(ge=1)]  # sizes, steps, batches: at least 1
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy, torch and scikit-learn all accept
# a registry name: no path separators, spaces or control characters (it names directories and tags)
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class _Section(BaseModel):
    """A params section: unknown keys, NaN and infinity are refused (with the key's path in the message)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataLimits(_Section):
    """Input size limits (care.data.reader), checked before parsing or validating, so a hostile file fails in
    seconds: the file's size before it is read, each line's length before JSON parsing, the rest before schema
    and Great Expectations validation."""

    max_file_mb: Positive = 1024  # one annotation file (MiB)
    max_line_kb: Positive = 8192  # one JSONL line, i.e. one session (KiB)
    max_text_chars: Count = 1_000_000  # one utterance, context or rationale (characters)
    max_turns: Count = 20_000  # turns of one session
    max_keys: Count = 1_000  # keys of one ratings or rationales mapping

    @property
    def file_bytes(self) -> int:
        return int(self.max_file_mb * (1 << 20))

    @property
    def line_bytes(self) -> int:
        return int(self.max_line_kb * (1 << 10))


class DataParams(_Section):
    path: str = "data/sessions.jsonl"
    instrument: str = "wai-sr"
    limit: Count | None = None  # keep the first N sessions (CI-sized runs)
    limits: DataLimits = DataLimits()


class BaseCorpusParams(_Section):
    """The unlabelled pretraining corpus of the embedded base (`care base build`): synthetic transcripts from
    seeds that never generate the default data (seed 0), plus multi-script text that ships with Faker."""

    languages: list[str] = ["zh", "en"]  # synthetic transcript languages (care.data.synth)
    sessions_per_language: Count = 15000
    heldout_sessions_per_language: Count = 200  # held-out documents for the LM loss curve
    seed: int = Field(10_000, ge=1000)  # synthetic seeds seed, seed+1, ...; the default data is seed 0
    utterances: Annotated[int, Field(ge=10)] = 24  # mean utterances per session
    script_locales: list[str] = [  # Faker locales whose text teaches the tokenizer (and the model) other scripts
        "ja_JP", "zh_CN", "zh_TW", "ko_KR", "ru_RU", "uk_UA", "el_GR", "he_IL", "ar_AA", "fa_IR", "hy_AM",
        "th_TH", "hi_IN", "bn_BD", "ka_GE", "vi_VN", "de_DE", "fr_FR", "es_ES", "pl_PL", "cs_CZ", "tr_TR"]
    script_lines_per_locale: Count = 3000  # lines of Faker text per locale
    script_share: Share = 0.05  # share of pretraining documents that are multi-script text


class BaseBuildParams(_Section):
    """How `care base build` makes the embedded `tiny` base: tokenizer, architecture, pretraining schedule."""

    vocab_size: Count = 8192
    hidden_size: Count = 128
    intermediate_size: Count = 344
    layers: Count = 2
    heads: Count = 4
    max_position: Count = 4096
    window: Count = 1024  # tokens per pretraining row: whole documents up to this length
    batch: Count = 8  # documents per step
    steps: Count = 2400
    lr: Positive = 3e-3
    min_lr_ratio: Share = 0.1  # cosine decay to lr x this
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    weight_decay: NonNegative = 0.01
    eval_every: Count = 200  # steps between held-out loss evaluations (the loss curve)
    checkpoint_every: Count = 400  # steps between resumable checkpoints
    seed: Seed = 7
    corpus: BaseCorpusParams = BaseCorpusParams()


class TinyBaseParams(_Section):
    """Where the `tiny` preset finds its shipped base (DVC-tracked, `base.dvc`) and the content digest it must
    have (`care base build` prints it)."""

    path: str = "base/tiny"
    digest: str | None = None  # sha256 over the base's files; None accepts any base (a warning names it)


Auto = Literal["auto"]  # resolved from the preset's recipe when params are loaded (care.model.recipe)
# a transcript longer than the context: keep_end keeps its end (drops whole turns from the start);
# keep_start_end keeps the opening and the end, dropping turns in the middle (care.model.prompts)
ContextPolicy = Literal["keep_end", "keep_start_end"]
Readout = Literal["expected", "greedy"]  # expected: the probability-weighted score; greedy: the answer token


class ModelParams(_Section):
    preset: Literal["tiny", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct"] = "tiny"
    base: str | None = None  # hub id or local path for the real presets (default: the preset's hub id)
    # the hub commit a hub-id base is pinned to (40 hex digits); the real presets pin their own
    # (care.model.presets.PRESETS), another hub id must name one
    revision: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    finetune: Literal["auto", "lora", "full"] = "auto"  # auto: the preset's recipe (tiny full, real presets lora)
    max_length: Count | Auto = "auto"  # context in tokens; auto: tiny 1024, real presets 8192 (the paper's)
    context_policy: ContextPolicy = "keep_end"
    target_tokens: Count = 128  # room kept after each prompt for the target (score + rationale); longer is clipped
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # None: off for tiny; for the real presets decided by memory when training starts (care.model.memory): off
    # when the step fits `train.memory_cap_gib`, on otherwise
    gradient_checkpointing: bool | None = None
    # the date every chat template sees (Llama 3.1 writes "Today Date" into the system prompt): fixed, so
    # prompts, cache keys and scores do not change from one day to the next
    prompt_date: date = date(2024, 7, 26)
    tiny_base: TinyBaseParams = TinyBaseParams()  # the `tiny` preset's shipped base
    base_build: BaseBuildParams = BaseBuildParams()  # how `care base build` makes it


class LoraParams(_Section):
    r: Count = 16
    alpha: Count = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] | Auto = "auto"  # auto: tiny 0.05, real presets 0
    target_modules: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainParams(_Section):
    targets: Literal["rationale", "score_only"] = "rationale"
    # item: per-item examples (with share_prefix); session: one packed sequence per session (care.model.packing);
    # auto: the preset's recipe (tiny item, real presets session)
    packing: Literal["auto", "item", "session"] = "auto"
    epochs: Positive | Auto = "auto"  # auto: tiny 0.75, real presets 2
    max_steps: Count | None = None
    lr: Positive | Auto = "auto"  # auto: tiny 5e-4 (full fine-tuning), real presets 1e-4 (LoRA)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: Share = 0.1
    # item layout: examples per micro-batch (with share_prefix, half a session's 12 items); session layout:
    # a step holds whole sessions, about batch_size x grad_accum items
    batch_size: Count = 6
    grad_accum: Count = 4
    # session layout: whole sessions per optimizer step; None: about batch_size x grad_accum items' worth;
    # auto: the preset's recipe (real presets 4, tiny None)
    sessions_per_step: Count | None | Auto = "auto"
    # session layout: packed sessions per forward pass (one sequence); item layout with share_prefix: micro-batches;
    # auto: as many as fit train.memory_cap_gib (care.model.memory), at most a step's. Changes the speed, not the loss.
    sessions_per_forward: Count | Auto = "auto"
    memory_cap_gib: Positive | None = None  # what a training step may use; None: the device's memory
    # trainable weights' dtype when the base runs in bf16: bfloat16 keeps a float32 master copy in the optimizer and
    # runs without autocast (no per-call casts); float32 runs under bf16 autocast; auto: bfloat16 in one process
    adapter_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # fused kernels (liger-kernel: RMSNorm, SwiGLU, RoPE, linear cross-entropy at the target positions): auto uses
    # them on one CUDA device when installed (`pip install liger-kernel`), never on CPU
    fused_kernels: Literal["auto", "none", "liger"] = "auto"
    weight_decay: NonNegative = 0.0
    max_grad_norm: Positive = 1.0
    # item layout: a micro-batch holds one session's items and runs packed, its transcript once (same loss as
    # separate examples; micro-batches then never mix sessions).
    share_prefix: bool = True
    # weight of the score digit (the first target token) against each rationale token in the loss; 1 is
    # plain token-mean cross-entropy (the paper); with score_only targets it weighs the digit against EOS.
    score_weight: Positive = 30.0
    seed: Seed = 123
    # processes that share each fine-tune (DDP under `accelerate launch`: one per GPU; gloo on CPU). A step
    # holds the same micro-batches whatever the count (rounded up to a multiple of it), split over them.
    num_processes: Count = 1


class CvParams(_Section):
    folds: int = Field(5, ge=2)  # at most the number of clients: checked against the data before a run
    seed: Seed = 123


class WarningParams(_Section):
    """When a run says it learned nothing (care.evaluation.diagnostics); each fold and the aggregate are checked."""

    min_digit_mass: Share = 0.5  # mean probability on the scale digits at the answer position
    min_prediction_sd: NonNegative = 0.05  # spread of the predicted dimension scores over held-out sessions
    max_truncated_share: Share = 0.25  # share of transcripts cut to fit the context


class EvalParams(_Section):
    readout: Readout = "expected"
    zero_shot: bool = True
    rationale_sample: Annotated[int, Field(ge=0)] = 24
    rationale_max_new_tokens: Count = 96
    # rationales' quotations constrained to verbatim spans of the transcript (care.evaluation.grounding);
    # the metrics report the sample both ways either way, this picks what `care score` does by default
    grounded_quotes: bool = True
    # levels (percent) of the conformal intervals calibrated on the folds' residuals (care.evaluation.intervals)
    interval_levels: list[Annotated[int, Field(gt=0, lt=100)]] = Field([80, 90], min_length=1)
    batch_size: Count = 16
    # baselines on the same folds besides counselor / train_mean / zero_shot: TF-IDF + ridge on the
    # transcript (`tfidf`), and a helper-side item mapped to a dimension (`helper_proxy`, e.g. ESConv's
    # {supporter_detail: [task, bond]}); never a counselor rating of the instrument's items
    text_baseline: bool = True
    helper_proxy: dict[str, str | list[str]] = {}
    warnings: WarningParams = WarningParams()


class GateParams(_Section):
    """Release gate on the cross-validated means (see care.evaluation.gate). Keys are dimensions; "*" applies to
    every dimension in cv_detail.json not named explicitly. A bar no model can pass (a Pearson above 1, an MSE
    below 0) is refused here; names the instrument or the run lacks, before the run (care.evaluation.gate)."""

    min_pearson: dict[str, Annotated[float, Field(le=1)]] = {"*": 0.3}
    max_mse: dict[str, NonNegative] = {"*": 1.0}
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
    model_name: ModelName = "care-alliance"
    stage_on_pass: Literal["staging", "none"] = "staging"


# The kind of each preset, and the recipe each kind resolves `auto` to. tiny: what cross-validation chose within
# the default run's 15-minute budget (docs/results.md). The real presets: LoRA r16 at lr 1e-4 in the session
# layout, 4 whole sessions a step and twice the item layout's single epoch (docs/results.md: whole-session steps of
# 2 sessions are noisier than steps of 4 half-sessions; 4 sessions a step with twice the passes agreed within fold
# noise), no LoRA dropout (LLaMA-Factory's default, the CARE authors' tool; it also saves a dropout kernel and its
# mask per projection).
PRESET_KIND = {"tiny": "tiny", "llama-3.1-8b-instruct": "real", "qwen2.5-7b-instruct": "real"}
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {"model.finetune": "full", "model.max_length": 1024, "lora.dropout": 0.05, "train.packing": "item", "train.epochs": 0.75,
             "train.lr": 5e-4, "train.sessions_per_step": None},
    "real": {"model.finetune": "lora", "model.max_length": 8192, "lora.dropout": 0.0, "train.packing": "session", "train.epochs": 2.0,
             "train.lr": 1e-4, "train.sessions_per_step": 4},
}


def _resolve_recipe(sections: dict[str, BaseModel], resolved: dict[str, str]) -> None:
    """Replace every `auto` of the recipe keys by the preset's recipe, noting what and why in `resolved`."""
    kind = PRESET_KIND[sections["model"].preset]
    for key, value in RECIPES[kind].items():
        name, field = key.split(".")
        if getattr(sections[name], field) == "auto":
            setattr(sections[name], field, value)
            resolved[key] = f"auto -> {value!r} ({sections['model'].preset} preset's recipe)"


class _Recipe(_Section):
    """Sections whose `auto` values resolve from the preset's recipe as soon as they are validated."""

    # what each `auto` resolved to and why (filled on validation; kept through dumps)
    resolved: dict[str, str] = {}

    @model_validator(mode="after")
    def _recipe(self):
        _resolve_recipe({"model": self.model, "lora": self.lora, "train": self.train}, self.resolved)
        return self


class FitParams(_Recipe):
    """The sections that decide a fine-tuned model: what the fine-tune steps receive and its cache key hashes."""

    model: ModelParams = ModelParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()


class Params(_Recipe):
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
        return FitParams(model=self.model, lora=self.lora, train=self.train, resolved=self.resolved)

    def digest(self, *sections: str) -> str:
        """sha256 over the canonical JSON of the given sections (all when none are named)."""
        dump = self.model_dump(mode="json")
        if sections:
            dump = {k: dump[k] for k in sections}
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def checked_model_name(name: str) -> str:
    """A registry model name given on the command line (`--model-name`), under registry.model_name's rule."""
    try:
        return TypeAdapter(ModelName).validate_python(name)
    except ValidationError:
        raise UsageError(f"--model-name {label(name)}: not a registry name (a letter or digit, then letters, digits, "
                         "'.', '_' or '-'; at most 100; no spaces, path separators or control characters)") from None


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
    node[parts[-1]] = load_yaml(raw, f"--set {label(key.strip(), 80)}", "the value", UsageError,
                                located=False) if raw.strip() else None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params (a missing default file means all defaults) and apply `KEY=VALUE` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.exists():
            tree = load_yaml_file(p, "params file", UsageError) or {}
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
