"""`care base build`: pretrain the embedded `tiny` base on the unlabelled corpus (care.model.base_corpus).

The result is a Hugging Face model directory (safetensors weights, tokenizer, config) plus what a reader
needs to trust it: `care_base.json` (the build params, corpus counts, tokenizer report, final held-out loss,
timings), `loss_curve.json` and `loss_curve.png` (held-out LM loss against pretraining tokens). It is
shipped through DVC (`base.dvc`) and the `tiny` preset loads it by its content digest (`base_digest`).

Pretraining: whole documents (up to `window` tokens, longer ones cut at a random window, half of the time
their end) in batches of similar length, AdamW with linear warm-up and cosine decay. Every
`checkpoint_every` steps the model, the optimizer, the sampler's RNG and the curve are saved as
safetensors + JSON under `<out>.checkpoint/`; a rerun with the same params resumes there and ends with the
same weights as an uninterrupted build. CPU builds are deterministic for a given thread count.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from care.errors import CareError
from care.model.base_files import BASE_CARD
from care.params import Params

CURVE_JSON = "loss_curve.json"
CURVE_PNG = "loss_curve.png"
CHECKPOINT_SUFFIX = ".checkpoint"
HELDOUT_DOCS = 64  # held-out documents scored for each point of the loss curve
_SIMILAR = 4  # a batch is drawn from this many x batch neighbours in length order


def build_digest(params: Params) -> str:
    """What decides a build: the base_build params, the prompt date, and the source of the build code."""
    from care.cache import digest, source_digest
    from care.model.base_corpus import wording_digest

    return digest({"base_build": params.model.base_build.model_dump(mode="json"),
                   "prompt_date": params.model.prompt_date.isoformat(),
                   "source": source_digest(__name__), "wording": wording_digest()})


# -------------------------------------------------------------------------------------------- the tokenizer


def tokenizer_report(tokenizer, corpus) -> dict:
    """Per language (synthetic) and locale (multi-script): tokens per character on held-out text, and the
    share of characters the tokenizer has no single token for (they fall back to bytes)."""
    samples: dict[str, list[str]] = {}
    for lang, text in corpus.heldout:
        samples.setdefault(lang, []).append(text)
    for locale, lines in corpus.script_heldout.items():
        samples.setdefault(locale, []).extend(lines)
    single: dict[str, bool] = {}
    report = {}
    for name, texts in sorted(samples.items()):
        text = "\n".join(texts[:50])
        chars = [ch for ch in text if not ch.isspace()]
        for ch in set(chars) - set(single):
            single[ch] = len(tokenizer(ch, add_special_tokens=False)["input_ids"]) == 1
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        report[name] = {"tokens_per_char": round(tokens / max(1, len(text)), 4),
                        "byte_fallback_share": round(sum(not single[ch] for ch in chars) / max(1, len(chars)), 4)}
    return report


# ------------------------------------------------------------------------------------------- pretraining


class Sampler:
    """Batches of whole documents of similar length, deterministic in its RNG state."""

    def __init__(self, docs: list[list[int]], batch: int, window: int, seed: int):
        self.docs, self.batch, self.window = docs, batch, window
        self.order = sorted(range(len(docs)), key=lambda i: (len(docs[i]), i))
        self.rng = random.Random(seed)

    def next(self) -> list[list[int]]:
        span = min(len(self.order), self.batch * _SIMILAR)
        start = self.rng.randrange(len(self.order) - span + 1)
        picks = self.rng.sample(self.order[start:start + span], min(self.batch, span))
        rows = []
        for i in picks:
            doc = self.docs[i]
            if len(doc) <= self.window:
                rows.append(doc)
            elif self.rng.random() < 0.5:
                rows.append(doc[-self.window:])
            else:
                s = self.rng.randrange(len(doc) - self.window + 1)
                rows.append(doc[s:s + self.window])
        return rows


def _batch(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def heldout_loss(model, docs: list[list[int]], pad_id: int, window: int, batch: int = 8) -> float:
    """Mean next-token loss per token over the held-out documents (their first `window` tokens)."""
    import torch

    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for k in range(0, len(docs), batch):
            ids, mask, labels = _batch([d[:window] for d in docs[k:k + batch]], pad_id)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += float((target != -100).sum())
    model.train()
    return total / max(1.0, count)


def _lr_factor(step: int, build) -> float:
    if step < build.warmup_steps:
        return (step + 1) / build.warmup_steps
    progress = min(1.0, (step - build.warmup_steps) / max(1, build.steps - build.warmup_steps))
    return build.min_lr_ratio + (1 - build.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _save_checkpoint(where: Path, model, tokenizer, optimizer, sampler: Sampler, state: dict) -> None:
    """Model, optimizer moments and RNG state as safetensors + JSON, replaced atomically; with the tokenizer
    and config beside the weights, a checkpoint also loads as a (partly pretrained) base."""
    import torch
    from safetensors.torch import save_file

    from care.fsutil import atomic_dir

    with atomic_dir(where) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        moments = {}
        names = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        moments[f"{names[id(p)]}::{key}"] = st[key].contiguous()
                if "step" in st:
                    moments[f"{names[id(p)]}::step"] = torch.as_tensor(st["step"], dtype=torch.float64).reshape(1)
        moments["__torch_rng__"] = torch.get_rng_state()
        save_file(moments, str(tmp / "optimizer.safetensors"))
        rng_state = sampler.rng.getstate()
        (tmp / "state.json").write_text(json.dumps({**state, "sampler_rng": [rng_state[0], list(rng_state[1]), rng_state[2]]}), "utf-8")


def _load_checkpoint(where: Path, model, optimizer, sampler: Sampler) -> dict:
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(where / "model.safetensors")))
    moments = load_file(str(where / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in moments.items():
        if key == "__torch_rng__":
            torch.set_rng_state(value)
            continue
        name, kind = key.split("::")
        st = optimizer.state[params[name]]
        st[kind] = value.reshape(()).to(torch.float32) if kind == "step" else value
    state = json.loads((where / "state.json").read_text("utf-8"))
    v, internal, gauss = state.pop("sampler_rng")
    sampler.rng.setstate((v, tuple(internal), gauss))
    return state


def build_base(params: Params, out: str | Path, *, progress: bool = True, stop_after: int | None = None) -> dict:
    """Build the base into `out` (atomically) and return its card. Resumes from `<out>.checkpoint/` when
    that holds a checkpoint of the same build (`build_digest`); `stop_after` ends early after that many
    steps with only the checkpoint written (tests use it to simulate an interrupted build)."""
    import torch
    from tqdm.auto import tqdm

    from care.fsutil import atomic_dir, atomic_write_json
    from care.model.base_corpus import build_corpus, documents, tokenizer_texts
    from care.model.tiny import random_model, train_tokenizer

    build = params.model.base_build
    out = Path(out)
    checkpoint = out.with_name(out.name + CHECKPOINT_SUFFIX)
    key = build_digest(params)
    started = time.perf_counter()

    corpus = build_corpus(build)
    tokenizer = train_tokenizer(tokenizer_texts(corpus), build.vocab_size)
    docs = documents(corpus, tokenizer, params.model)
    report = tokenizer_report(tokenizer, corpus)
    heldout = docs.heldout[:HELDOUT_DOCS]
    model = random_model(tokenizer, hidden_size=build.hidden_size, intermediate_size=build.intermediate_size,
                         layers=build.layers, heads=build.heads, max_position=build.max_position, seed=build.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=build.lr, weight_decay=build.weight_decay, betas=(0.9, 0.98))
    sampler = Sampler(docs.train, build.batch, build.window, build.seed)
    pad_id = tokenizer.pad_token_id

    state = {"key": key, "step": 0, "tokens": 0, "curve": [], "train_loss": []}
    resumed_from = None
    if (checkpoint / "state.json").is_file():
        if json.loads((checkpoint / "state.json").read_text("utf-8")).get("key") != key:
            raise CareError(f"{checkpoint}: a checkpoint of another build (params or code differ); remove it to start over")
        state = _load_checkpoint(checkpoint, model, optimizer, sampler)
        resumed_from = state["step"]
    if not state["curve"]:
        state["curve"].append({"step": 0, "tokens": 0, "heldout_loss": round(heldout_loss(model, heldout, pad_id, build.window), 5)})

    bar = tqdm(total=build.steps, initial=state["step"], desc="base pretrain", disable=not progress, mininterval=2.0)
    window_losses: list[float] = []
    while state["step"] < build.steps:
        ids, mask, labels = _batch(sampler.next(), pad_id)
        for group in optimizer.param_groups:
            group["lr"] = build.lr * _lr_factor(state["step"], build)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += int(mask.sum())
        window_losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{window_losses[-1]:.3f}", refresh=False)
        step = state["step"]
        if step % build.eval_every == 0 or step == build.steps:
            state["train_loss"].append({"step": step, "loss": round(sum(window_losses) / len(window_losses), 5)})
            window_losses = []
            state["curve"].append({"step": step, "tokens": state["tokens"],
                                   "heldout_loss": round(heldout_loss(model, heldout, pad_id, build.window), 5)})
        if step % build.checkpoint_every == 0 and step < build.steps:
            _save_checkpoint(checkpoint, model, tokenizer, optimizer, sampler, state)
        if stop_after is not None and step >= stop_after and step < build.steps:
            _save_checkpoint(checkpoint, model, tokenizer, optimizer, sampler, state)
            bar.close()
            return {"stopped_at": step}
    bar.close()

    model.eval()
    card = {
        "preset": "tiny",
        "build_digest": key,
        "base_build": build.model_dump(mode="json"),
        "prompt_date": params.model.prompt_date.isoformat(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "corpus": {"transcripts": len(corpus.transcripts), "heldout_transcripts": len(corpus.heldout),
                   "documents": docs.kinds, "train_tokens_available": sum(len(d) for d in docs.train),
                   "script_locales": sorted(corpus.script_lines)},
        "pretrain_tokens": state["tokens"],
        "heldout_loss": state["curve"][-1]["heldout_loss"],
        "tokenizer": report,
        "resumed_from_step": resumed_from,
        "torch_threads": torch.get_num_threads(),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / CURVE_JSON, {"curve": state["curve"], "train_loss": state["train_loss"]})
        _plot_curve(state["curve"], tmp / CURVE_PNG)
        atomic_write_json(tmp / BASE_CARD, card)
    import shutil

    shutil.rmtree(checkpoint, ignore_errors=True)
    return card


def _plot_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([p["tokens"] / 1e6 for p in curve], [p["heldout_loss"] for p in curve], marker="o", markersize=3)
    ax.set_xlabel("pretraining tokens (millions)")
    ax.set_ylabel("held-out LM loss (nats/token)")
    ax.set_title("embedded base: held-out loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
