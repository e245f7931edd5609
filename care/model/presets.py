"""Base models: the `tiny` preset (built and cached locally) and the real presets (hub id or local path).

`prepare_base` returns where the base model lives (a local directory, or a hub id that transformers
downloads on a machine with hub access); `load_base` loads it with the right dtype, padding and
gradient-checkpointing settings.

The tiny build is an honest small model, not a fake: a byte-level BPE tokenizer trained on unlabelled
synthetic transcripts (a separate corpus, seed `TINY_CORPUS_SEED`, never the training data) plus the prompt
texts, and a small Llama briefly pretrained as a plain language model on those transcripts rendered
through the chat template. No ratings and no rationales are seen: those are labels. LoRA on a randomly
initialised base does not learn; the short pretraining is what makes it adaptable.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Sequence

from care.errors import CareError
from care.params import Params

TINY_CORPUS_SEED = 10_000
BASE_CARD = "care_base.json"  # written into every tiny build: marks it and records how it was made

PRESETS: dict[str, dict[str, str | None]] = {
    "tiny": {"hub_id": None, "kind": "tiny"},
    "llama-3.1-8b-instruct": {"hub_id": "meta-llama/Llama-3.1-8B-Instruct", "kind": "real"},
    "qwen2.5-7b-instruct": {"hub_id": "Qwen/Qwen2.5-7B-Instruct", "kind": "real"},
}

# Tokens used as padding when a tokenizer has none (Llama 3 ships without one). Padding positions are
# always masked out of the loss by position, never by id, so the choice only has to be a real token that
# is not EOS.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|endoftext|>", "<pad>", "<|pad|>", "<unk>")


def _languages(params: Params, languages: Sequence[str] | None) -> list[str]:
    from care.data.instrument import load_instrument

    instrument = load_instrument(params.data.instrument)
    langs = sorted(set(languages)) if languages else sorted(set(instrument.languages))
    for lang in langs:
        instrument.prompt_texts(lang)  # a language without prompt wording is refused here, by name
    return langs


def tiny_key(params: Params, languages: Sequence[str] | None = None) -> str:
    """Cache key of a tiny build: its params, the source it is built from (this module and every `care`
    module it imports: the synthetic corpus, the prompts), the instrument file's content and the languages."""
    from care.cache import source_digest
    from care.data.instrument import instrument_digest, load_instrument

    blob = {
        "tiny": params.model.tiny.model_dump(mode="json"),
        "prompt_date": params.model.prompt_date.isoformat(),
        "source": source_digest(__name__),
        "instrument": instrument_digest(params.data.instrument),
        "prompts": load_instrument(params.data.instrument).prompts_digest(),
        "languages": _languages(params, languages),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def is_tiny(path_or_id: str | Path) -> bool:
    return (Path(path_or_id) / BASE_CARD).is_file()


def prepare_base(params: Params, cache_root: str | Path, languages: Sequence[str] | None = None) -> Path | str:
    """Where the base model lives: a local directory (tiny builds, local paths, hub snapshots already in
    the local cache) or a hub id that `load_base` passes to transformers (which downloads it where it can).

    `languages` (default: the instrument's languages) decides the tiny build's tokenizer and pretraining text.
    """
    preset = params.model.preset
    if preset not in PRESETS:
        raise CareError(f"model.preset {preset!r} unknown (known: {', '.join(PRESETS)})")
    if params.model.base:
        ref = params.model.base
    elif PRESETS[preset]["kind"] == "tiny":
        return build_tiny(params, Path(cache_root), languages)
    else:
        ref = PRESETS[preset]["hub_id"]
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise CareError(f"model.base {local}: no config.json there (expected a Hugging Face model directory)")
        return local.resolve()
    try:  # a snapshot already in the local hub cache; never downloads here
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not a hub id): transformers resolves it at load time
        return str(ref)


# --------------------------------------------------------------------------------------------------------
# the tiny build


def _pretrain_texts(params: Params, languages: list[str]) -> tuple[list[str], list[str]]:
    """(tokenizer texts, pretraining documents) from a separate synthetic corpus: transcripts only."""
    from care.data.instrument import load_instrument
    from care.model.prompts import item_block, render_transcript
    from care.data.synth import LANGUAGES as SYNTH_LANGUAGES, generate

    instrument = load_instrument(params.data.instrument)
    tiny = params.model.tiny
    per_lang = max(1, math.ceil(tiny.pretrain_sessions / len(languages)))
    transcripts: list[tuple[str, str]] = []
    synth_langs = list(SYNTH_LANGUAGES)
    for k, lang in enumerate(languages):
        # a language the generator does not write gets its dialogue from one it does, under its own prompts
        source = lang if lang in SYNTH_LANGUAGES else synth_langs[k % len(synth_langs)]
        sessions, _ = generate(n_sessions=per_lang, language=source, seed=TINY_CORPUS_SEED + k)
        transcripts += [(lang, render_transcript(s, instrument.prompt_texts(lang))) for s in sessions]
    prompt_texts = []
    for lang in languages:
        t = instrument.prompt_texts(lang)
        prompt_texts += [t.system, t.instruction, t.context, t.speakers.counselor, t.speakers.client, t.item]
        prompt_texts += [item_block(instrument, item_id, lang) for item_id in instrument.item_ids]
        prompt_texts += [labels[lang] for labels in instrument.scale.labels.values() if lang in labels]
    return [text for _, text in transcripts] + prompt_texts, transcripts


def _render_doc(tokenizer, texts, transcript: str, block: str, prompt_date) -> str:
    from care.model.prompts import template_variables

    messages = [
        {"role": "system", "content": texts.system},
        {"role": "user", "content": f"{texts.instruction}\n\n{transcript}\n\n{block}"},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **template_variables(prompt_date))


def build_tiny(params: Params, cache_root: Path, languages: Sequence[str] | None = None) -> Path:
    """Build (once) and cache the tiny base model; returns its directory."""
    from care.fsutil import atomic_dir

    langs = _languages(params, languages)
    target = Path(cache_root) / f"tiny-{tiny_key(params, langs)}"
    if (target / BASE_CARD).is_file():
        return target
    with atomic_dir(target) as tmp:
        card = _build_tiny_into(params, langs, tmp)
        (tmp / BASE_CARD).write_text(json.dumps(card, indent=2) + "\n", "utf-8")
    return target


def _build_tiny_into(params: Params, langs: list[str], out: Path) -> dict:
    import torch
    from tqdm.auto import tqdm

    from care.data.instrument import load_instrument
    from care.model.prompts import item_block
    from care.model.tiny import random_model, train_tokenizer

    tiny = params.model.tiny
    started = time.perf_counter()
    tok_texts, transcripts = _pretrain_texts(params, langs)
    tokenizer = train_tokenizer(tok_texts, tiny.vocab_size)
    model = random_model(
        tokenizer, hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size, layers=tiny.layers,
        heads=tiny.heads, max_position=tiny.max_position, seed=tiny.seed,
    )
    instrument = load_instrument(params.data.instrument)
    rng = random.Random(tiny.seed)
    docs = []
    for k, (lang, transcript) in enumerate(transcripts):
        if k % 3 == 2:  # a third as plain text ending in EOS, so EOS is a token the model has seen
            text = tokenizer.bos_token + transcript + tokenizer.eos_token
        else:  # the rest under the prompt of a random item (no ratings)
            text = _render_doc(tokenizer, instrument.prompt_texts(lang), transcript,
                               item_block(instrument, rng.choice(instrument.item_ids), lang), params.model.prompt_date)
        docs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    # Pretraining on fixed-length windows of the documents (ending at the document end half the time, so
    # the prompt's closing part is well learnt).
    window = min(tiny.pretrain_window, tiny.max_position)
    pad_id = tokenizer.pad_token_id
    torch.manual_seed(tiny.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=tiny.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.98))
    steps = tiny.pretrain_steps
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses = []
    bar = tqdm(range(steps), desc="tiny pretrain", leave=False, mininterval=1.0)
    for _ in bar:
        rows = []
        for _ in range(tiny.pretrain_batch):
            doc = docs[rng.randrange(len(docs))]
            if len(doc) <= window:
                rows.append(doc)
            elif rng.random() < 0.5:
                rows.append(doc[-window:])
            else:
                start = rng.randrange(len(doc) - window + 1)
                rows.append(doc[start:start + window])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, steps // 10):]
    return {
        "preset": "tiny",
        "key": tiny_key(params, langs),
        "languages": langs,
        "instrument": params.data.instrument,
        "tiny": tiny.model_dump(mode="json"),
        "corpus_seed": TINY_CORPUS_SEED,
        "pretrain_documents": len(docs),
        "pretrain_final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


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


def load_base(path_or_id: str | Path, params: Params | None = None, device="cpu", *, training: bool = False):
    """Load (model, tokenizer). Tiny builds load in float32; real models in bf16 on CUDA (float32 on CPU)
    unless `model.dtype` says otherwise. Gradient checkpointing (training only) follows
    `model.gradient_checkpointing` (None: on for real models, off for tiny). Safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM

    device = _resolve_device(device)
    tiny = is_tiny(path_or_id)
    dtype_name = params.model.dtype if params is not None else "auto"
    if dtype_name == "auto":
        dtype = torch.bfloat16 if (not tiny and device.type == "cuda") else torch.float32
    else:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    tokenizer = load_tokenizer(path_or_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path_or_id), dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise CareError(f"cannot load base model {path_or_id}: {type(exc).__name__} (safetensors weights required)") from None
    model.to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    gc = params.model.gradient_checkpointing if params is not None else None
    if gc is None:
        gc = not tiny
    if training and gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not training:
        model.eval()
    return model, tokenizer
