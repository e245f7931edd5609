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

PRESETS: dict[str, dict[str, str | None]] = {
    "tiny": {"hub_id": None, "kind": PRESET_KIND["tiny"]},
    "llama-3.1-8b-instruct": {"hub_id": "meta-llama/Llama-3.1-8B-Instruct", "kind": PRESET_KIND["llama-3.1-8b-instruct"]},
    "qwen2.5-7b-instruct": {"hub_id": "Qwen/Qwen2.5-7B-Instruct", "kind": PRESET_KIND["qwen2.5-7b-instruct"]},
}

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


def prepare_base(params: Params | FitParams) -> tuple[Path | str, str]:
    """Where the base model lives and its key: the shipped tiny base (key: its content digest), a local
    directory, a hub snapshot already in the local cache, or a hub id that `load_base` passes to
    transformers (which downloads it where it can). Never downloads here."""
    preset = params.model.preset  # one of PRESETS: model.preset's Literal
    if params.model.base:
        ref = params.model.base
    elif PRESETS[preset]["kind"] == "tiny":
        path, found = tiny_base(params)
        return path, found
    else:
        ref = PRESETS[preset]["hub_id"]
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise CareError(f"model.base {local}: no config.json there (expected a Hugging Face model directory)")
        return local.resolve(), str(local.resolve())
    try:  # a snapshot already in the local hub cache; never downloads here
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(ref, local_files_only=True))
        return snapshot, str(snapshot)
    except Exception:  # noqa: BLE001 - not cached (or not a hub id): transformers resolves it at load time
        return str(ref), str(ref)


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
