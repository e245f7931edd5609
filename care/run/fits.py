"""Fine-tuning within a run: the base model, one fit per fold and the final fit, cached by content.

A fit's key covers everything that decides it: the data's sha256, the training sessions, the base model,
the model/LoRA/training params, the instrument's content and the source of the training code
(`care.cache.source_digest`). A finished fit with the same key is reused as it is. A fit is built in a
private directory and published once (`care.cache.new_entry`): two runs fine-tuning the same fold at once
each train, the first to finish publishes, and neither ever sees the other's files change.
"""

from __future__ import annotations

import json
from pathlib import Path

from care.cache import cache_root, digest, new_entry, source_digest
from care.fsutil import atomic_write_json
from care.params import FitParams
from care.run.artifacts import ModelDir
from care.run.data import DataRef, load_data, split
from care.run.documents import FoldsPlan

DONE = "done.json"
ADAPTER = "model"


def prepare_base(data: DataRef, fit: FitParams) -> ModelDir:
    """The base model, by reference: the shipped tiny base (key: its content digest) or a real preset's
    weights. Neither travels through the artifact store: like the data, it is read where the run runs."""
    from care.model.presets import prepare_base as locate

    ref, key = locate(fit)
    return ModelDir(str(ref), key=key, travels=False)


def builder(fit: FitParams, tokenizer, instrument):
    """The prompt builder every fit, scorer and release uses for these params."""
    from care.model.prompts import PromptBuilder, PromptConfig

    return PromptBuilder(tokenizer, instrument, PromptConfig.from_params(fit.model))


def fit_key(data: DataRef, fit: FitParams, train_ids: list[str], base: ModelDir) -> str:
    """Cache key of a fine-tuned model (see the module docstring)."""
    return digest({
        "data": data.sha256, "train": sorted(train_ids), "base": base.key,
        "instrument": data.instrument_sha256, "prompts": data.prompts_sha256,
        "source": source_digest("care.model.launch"),  # the launcher and everything it runs (care.model.training)
        # the base enters through its key (a tiny base's content digest), not through how it was built
        "params": fit.model_dump(mode="json", include={"model", "lora", "train"},
                                 exclude={"model": {"base_build": True, "tiny_base": True}}),
    })[:24]


def finetune_on(data: DataRef, folds: FoldsPlan | None, k: int | None, fit: FitParams, base: ModelDir,
                desc: str) -> ModelDir:
    """Fine-tune on every session outside fold `k` (all sessions when `k` is None)."""
    sessions, instrument = load_data(data)
    train, _ = split(sessions, folds, k)
    key = fit_key(data, fit, [s.session_id for s in train], base)
    out_dir = cache_root() / "fits" / key
    if (out_dir / DONE).exists():
        return ModelDir(str(out_dir), key=key)
    from care.model.presets import load_tokenizer
    from care.model.launch import run_finetune
    from care.model.prompts import build_examples

    tokenizer = load_tokenizer(base.path)
    examples, stats = build_examples(train, builder(fit, tokenizer, instrument), fit.train.targets)
    with new_entry(out_dir, complete=lambda p: (p / DONE).is_file()) as tmp:
        train_stats = run_finetune(base.path, examples, fit, tmp / ADAPTER, desc=desc)
        atomic_write_json(tmp / DONE, {"base": base.key, "examples": stats.as_dict(), "train": train_stats})
    return ModelDir(str(out_dir), key=key)


def fit_record(model: ModelDir) -> dict:
    """What the fit recorded about itself: base key, example counts, training stats."""
    return json.loads((Path(model.path) / DONE).read_text("utf-8"))


def load_fit(model: ModelDir, base: ModelDir):
    """(model, tokenizer) of a finished fit on its base, in PyTorch."""
    from care.model.training import load_finetuned

    return load_finetuned(base.path, Path(model.path) / ADAPTER)
