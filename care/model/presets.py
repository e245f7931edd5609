"""Base models: the `tiny` preset (the embedded base shipped through DVC) and the real presets (hub id or
local path).

`prepare_base` returns where the base model lives (a local directory, or a hub id that transformers
downloads on a machine with hub access); `load_base` loads it with the right dtype, padding and
gradient-checkpointing settings.

The tiny base is built once by `care base build` (care.model.base_build: a byte-level BPE tokenizer covering
the common scripts and a small Llama pretrained on an unlabelled synthetic corpus that never overlaps the
default data) and shipped like data: `base.dvc` tracks `base/`, `dvc pull` fetches it, and the preset
loads it only when its content digest is the one `model.tiny_base.digest` names.
"""

from __future__ import annotations

from pathlib import Path

from care.errors import CareError
from care.model.base_files import BASE_CARD, base_digest
from care.params import PRESET_KIND, FitParams, Params

PRESETS: dict[str, dict[str, str | None]] = {  # hub id, and the hub commit a run of the preset trains on
    "tiny": {"hub_id": None, "revision": None, "kind": PRESET_KIND["tiny"]},
    "llama-3.1-8b-instruct": {"hub_id": "meta-llama/Llama-3.1-8B-Instruct",
                              "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
                              "kind": PRESET_KIND["llama-3.1-8b-instruct"]},
    "qwen2.5-7b-instruct": {"hub_id": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a35458c702b33eeacc393d103063234e8bc28",
                            "kind": PRESET_KIND["qwen2.5-7b-instruct"]},
}
# what a hub snapshot of a base needs (not the repositories' original-format checkpoints)
SNAPSHOT_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt"]

# Tokens used as padding when a tokenizer has none (Llama 3 ships without one). Padding positions are
# always masked out of the loss by position, never by id, so the choice only has to be a real token that
# is not EOS.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|endoftext|>", "<pad>", "<|pad|>", "<unk>")


def is_tiny(path_or_id: str | Path) -> bool:
    return (Path(path_or_id) / BASE_CARD).is_file()


def tiny_base(params: Params | FitParams) -> tuple[Path, str]:
    """The shipped tiny base: (directory, content digest), checked against `model.tiny_base.digest`."""
    ref = params.model.tiny_base
    path = Path(ref.path).expanduser()
    fix = ("run `dvc pull base.dvc` (the shipped base), or `care base build --out "
           f"{ref.path}` and set model.tiny_base.digest to the digest it prints")
    if not (path / BASE_CARD).is_file() or not (path / "config.json").is_file():
        raise CareError(f"model.tiny_base.path {ref.path}: no embedded base there; {fix}")
    found = base_digest(path)
    if ref.digest is not None and found != ref.digest:
        raise CareError(f"model.tiny_base.path {ref.path}: content digest {found[:16]}... is not "
                        f"model.tiny_base.digest {ref.digest[:16]}...; {fix}")
    return path.resolve(), found


def base_ref(params: Params | FitParams) -> str | None:
    """`model.base`, else the preset's hub id (None: the tiny preset's shipped base)."""
    return params.model.base or PRESETS[params.model.preset]["hub_id"]


def hub_revision(params: Params | FitParams) -> str | None:
    """The hub commit the run's base is pinned to: `model.revision`, else the preset's own for its hub id; None for
    the tiny base and weights on disk. A hub id without a commit is refused: the same params must train on the
    same weights tomorrow."""
    ref = base_ref(params)
    if ref is None or Path(ref).expanduser().exists():
        return None
    revision = params.model.revision or (PRESETS[params.model.preset]["revision"]
                                         if ref == PRESETS[params.model.preset]["hub_id"] else None)
    if revision is None:
        raise CareError(f"model.base {ref} is a hub id without a pinned commit: set model.revision to the 40-digit "
                        "commit to train on (the hub's page of the model lists its commits)")
    return revision


def prepare_base(params: Params | FitParams) -> tuple[Path | str, str]:
    """Where the base model lives and its key: the shipped tiny base (key: its content digest), a local
    directory, or the hub snapshot of the pinned commit (`hub_revision`), from the local hub cache or
    downloaded into it once (weights as safetensors, config and tokenizer only)."""
    ref = base_ref(params)
    if ref is None:
        path, found = tiny_base(params)
        return path, found
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise CareError(f"model.base {local}: no config.json there (expected a Hugging Face model directory)")
        return local.resolve(), str(local.resolve())
    revision = hub_revision(params)
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(ref, revision=revision, local_files_only=True, allow_patterns=SNAPSHOT_FILES)
    except Exception:  # noqa: BLE001 - not in the local hub cache yet
        try:
            snapshot = snapshot_download(ref, revision=revision, allow_patterns=SNAPSHOT_FILES)
        except Exception as exc:  # noqa: BLE001 - offline, gated, unknown id or commit: one line
            raise CareError(f"model.base {ref} at commit {revision}: cannot fetch it from the hub "
                            f"({type(exc).__name__}); log in (`hf auth login`) for a gated model, or give a local "
                            "path as model.base") from None
    return Path(snapshot), f"{ref}@{revision}"


# --------------------------------------------------------------------------------------------------------
# loading


def _resolve_device(device) -> "torch.device":  # noqa: F821
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token one of its own reserved/special tokens (never EOS)."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return
    if tokenizer.pad_token_id is None:
        raise CareError("the tokenizer has no pad token and no reserved token to use as one")


def load_tokenizer(path_or_id: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path_or_id))
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.padding_side = "right"
    ensure_pad_token(tokenizer)
    return tokenizer


def base_dtype(path_or_id: str | Path, params: Params | FitParams | None, device) -> str:
    """The dtype a base loads in: tiny builds float32; real models bf16 on CUDA, float32 on CPU, unless
    `model.dtype` says otherwise."""
    dtype_name = params.model.dtype if params is not None else "auto"
    if dtype_name != "auto":
        return dtype_name
    return "bfloat16" if (not is_tiny(path_or_id) and _resolve_device(device).type == "cuda") else "float32"


def load_base(path_or_id: str | Path, params: Params | FitParams | None = None, device="cpu", *,
              training: bool = False):
    """Load (model, tokenizer) in `base_dtype`. Safetensors only. In training mode nothing is switched on:
    the fine-tune decides gradient checkpointing (care.model.memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = _resolve_device(device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[base_dtype(path_or_id, params, device)]
    tokenizer = load_tokenizer(path_or_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise CareError(f"cannot load base model {path_or_id}: {type(exc).__name__} (safetensors weights required)") from None
    model.to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not training:
        model.eval()
    return model, tokenizer
