"""Cross-validation, one function per pipeline step: data, folds, fine-tune, score, fold metrics,
aggregate, gate. The ZenML steps call these; each takes the params as a plain dict and returns JSON.

Finished folds are cached on disk (see care.run.workspace), so an interrupted or repeated run reuses them.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from care.errors import CareError
from care.fsutil import atomic_write_json, atomic_write_lines
from care.data.instrument import Instrument, load_instrument
from care.release.manifest import sha256_file
from care.params import Params
from care.data.schema import Session
from care.run.workspace import Outputs, cache_root, code_digest, digest

DONE = "done.json"


def params_of(params: Params | dict) -> Params:
    return params if isinstance(params, Params) else Params.model_validate(params)


def load_data(params: Params | dict) -> tuple[list[Session], Instrument]:
    """The validated sessions of `data.path` (first `data.limit` when set) and the instrument."""
    from care.data.validation import load_valid_sessions

    p = params_of(params)
    instrument = load_instrument(p.data.instrument)
    sessions = load_valid_sessions(p.data.path, instrument)
    if p.data.limit is not None:
        sessions = sessions[: p.data.limit]
    return sessions, instrument


def data_summary(params: Params | dict) -> dict:
    """Validate the data; counts and the file's sha256 (no text)."""
    p = params_of(params)
    sessions, instrument = load_data(p)
    return {
        "path": p.data.path,
        "sha256": sha256_file(p.data.path),
        "n_sessions": len(sessions),
        "n_clients": len({s.client_id for s in sessions}),
        "n_with_counselor_ratings": sum(s.counselor_ratings is not None for s in sessions),
        "n_with_rationales": sum(bool(s.rationales) for s in sessions),
        "instrument": instrument.name,
        "languages": sorted({s.language for s in sessions}),
    }


def plan_folds(params: Params | dict, out: Outputs) -> dict:
    """Client-grouped stratified folds; writes `metrics/folds.json`."""
    from care.data.folds import folds_document, make_folds

    p = params_of(params)
    sessions, instrument = load_data(p)
    folds = make_folds(sessions, instrument, p.cv.folds, p.cv.seed)
    doc = folds_document(folds, sessions, p.cv.seed)
    atomic_write_json(out.metrics / "folds.json", doc)
    return doc


def _split(params: Params, folds_doc: dict, k: int | None) -> tuple[list[Session], list[Session], Instrument]:
    sessions, instrument = load_data(params)
    held = set() if k is None else set(folds_doc["folds"][k]["sessions"])
    train = [s for s in sessions if s.session_id not in held]
    test = [s for s in sessions if s.session_id in held]
    return train, test, instrument


def _languages(sessions: list[Session]) -> list[str]:
    return sorted({s.language for s in sessions})


def _builder(params: Params, tokenizer, instrument: Instrument):
    from care.model.prompts import PromptBuilder

    return PromptBuilder(tokenizer, instrument, params.model.max_length, params.model.target_tokens)


def fit_key(params: Params, train_ids: list[str]) -> str:
    """Cache key of a fine-tuned model: the data, the training sessions, the recipe and the code."""
    return digest({
        "data": sha256_file(params.data.path), "train": sorted(train_ids), "code": code_digest(),
        "model": params.model.model_dump(mode="json"), "lora": params.lora.model_dump(mode="json"),
        "train_params": params.train.model_dump(mode="json"), "instrument": params.data.instrument,
    })[:24]


def finetune_on(params: Params | dict, folds_doc: dict | None, k: int | None, desc: str) -> str:
    """Fine-tune on every session outside fold `k` (all sessions when `k` is None); returns the output dir.

    A finished result for the same key is reused as it is.
    """
    from care.model.presets import prepare_base
    from care.model.presets import load_tokenizer
    from care.model.prompts import build_examples
    from care.model.training import finetune

    p = params_of(params)
    train, _, instrument = _split(p, folds_doc or {"folds": []}, k)
    out_dir = cache_root() / "fits" / fit_key(p, [s.session_id for s in train])
    if (out_dir / DONE).exists():
        return str(out_dir)
    base = prepare_base(p, cache_root(), _languages(train))
    tokenizer = load_tokenizer(base)
    examples, stats = build_examples(train, _builder(p, tokenizer, instrument), p.train.targets)
    train_stats = finetune(base, examples, p, out_dir / "model", desc=desc)
    atomic_write_json(out_dir / DONE, {"base": str(base), "examples": stats.as_dict(), "train": train_stats})
    return str(out_dir)


def _sample_for_rationales(test: list[Session], n_pairs: int, seed: int) -> list[Session]:
    with_refs = [s for s in test if s.rationales]
    n_sessions = min(len(with_refs), math.ceil(n_pairs / 12)) if n_pairs > 0 else 0
    return random.Random(seed).sample(with_refs, n_sessions) if n_sessions else []


def score_fold(params: Params | dict, folds_doc: dict, k: int, fit_dir: str) -> dict:
    """Score fold `k`'s held-out sessions with the fine-tuned model and (eval.zero_shot) the base model.

    Returns item-level predictions for both readouts, unparsed counts, digit mass and rationale quality;
    cached next to the fine-tuned model.
    """
    p = params_of(params)
    cached = Path(fit_dir) / f"scored-{digest([k, p.eval.model_dump(mode='json'), folds_doc['folds'][k]['sessions']])[:16]}.json"
    if cached.exists():
        return json.loads(cached.read_text("utf-8"))
    from care.model.presets import load_base
    from care.evaluation.torch_scoring import rationale_quality, readout, score_sessions
    from care.model.training import load_finetuned

    _, test, instrument = _split(p, folds_doc, k)
    done = json.loads((Path(fit_dir) / DONE).read_text("utf-8"))
    model, tokenizer = load_finetuned(done["base"], Path(fit_dir) / "model")
    builder = _builder(p, tokenizer, instrument)
    scores = score_sessions(model, tokenizer, builder, test, batch_size=p.eval.batch_size)
    expected, _, unparsed_e = readout(scores, instrument, "expected")
    greedy, _, unparsed_g = readout(scores, instrument, "greedy")
    masses = [it.digit_mass for s in scores for it in s.items.values()]
    result: dict[str, Any] = {
        "fold": k,
        "predictions": {"expected": expected, "greedy": greedy},
        "unparsed": {"expected": unparsed_e, "greedy": unparsed_g},
        "digit_mass": {"mean": sum(masses) / len(masses), "min": min(masses)},
        "rationale_quality": None,
        "train": done["train"],
        "examples": done["examples"],
    }
    if p.train.targets == "rationale" and p.eval.rationale_sample > 0:
        sample = _sample_for_rationales(test, p.eval.rationale_sample, p.cv.seed + k)
        if sample:
            generated = score_sessions(model, tokenizer, builder, sample, batch_size=p.eval.batch_size,
                                       rationales=True, max_new_tokens=p.eval.rationale_max_new_tokens)
            pairs = []
            for session, scored in zip(sample, generated):
                utterances = [t.text for t in session.turns]
                for item_id, item in list(scored.items.items()):
                    if len(pairs) < p.eval.rationale_sample:
                        pairs.append((item.rationale or "", session.rationales[item_id], utterances, session.language))
            result["rationale_quality"] = rationale_quality(pairs)
    del model
    if p.eval.zero_shot:
        base_model, base_tok = load_base(done["base"], p)
        zs = score_sessions(base_model, base_tok, _builder(p, base_tok, instrument), test, batch_size=p.eval.batch_size)
        zs_items, _, zs_unparsed = readout(zs, instrument, "expected")
        result["zero_shot"] = {"predictions": zs_items, "unparsed": zs_unparsed}
    atomic_write_json(cached, result)
    return result


def fold_metrics(params: Params | dict, folds_doc: dict, k: int, scored: dict) -> dict:
    """Fold `k`'s metrics for the model (both readouts) and the baselines on the same sessions."""
    from care.evaluation.baselines import baseline_results, client_items
    from care.evaluation.metrics import evaluate

    p = params_of(params)
    train, test, instrument = _split(p, folds_doc, k)
    true = client_items(test)
    readouts = {mode: evaluate(scored["predictions"][mode], true, instrument) for mode in ("expected", "greedy")}
    baselines = baseline_results(train, test, instrument, p.eval.helper_proxy or None, text=p.eval.text_baseline)
    if "zero_shot" in scored:
        baselines["zero_shot"] = evaluate(scored["zero_shot"]["predictions"], true, instrument)
    return {
        "fold": k,
        "model": readouts[p.eval.readout],
        "readouts": readouts,
        "baselines": baselines,
        "unparsed": scored["unparsed"][p.eval.readout],
        "unparsed_by_readout": scored["unparsed"],
        "digit_mass": scored["digit_mass"],
        "rationale_quality": scored["rationale_quality"],
        "train": scored["train"],
        "examples": scored["examples"],
    }


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(params: Params | dict, folds_doc: dict, fold_results: list[dict], scored: list[dict], out: Outputs) -> dict:
    """`metrics/cv.json`, `metrics/predictions.jsonl` and the plots, from every fold's results."""
    from care.evaluation.baselines import client_items
    from care.evaluation.metrics import aggregate as agg_folds
    from care.evaluation.metrics import cv_document, rounded
    from care.evaluation.plots import predictions_rows, write_plots

    p = params_of(params)
    fold_results = sorted(fold_results, key=lambda r: r["fold"])
    rq = [r["rationale_quality"] for r in fold_results if r["rationale_quality"]]
    extra = {
        "readout": p.eval.readout,
        "readouts": {m: agg_folds([r["readouts"][m] for r in fold_results]) for m in ("expected", "greedy")},
        "unparsed_by_readout": {m: sum(r["unparsed_by_readout"][m] for r in fold_results) for m in ("expected", "greedy")},
        "digit_mass": {"mean": _mean([r["digit_mass"]["mean"] for r in fold_results]),
                       "min": min(r["digit_mass"]["min"] for r in fold_results)},
        "rationale_quality": (
            {key: _mean([q.get(key) for q in rq]) for key in rq[0] if isinstance(rq[0][key], (int, float))} if rq else None
        ),
        "examples": {key: sum(r["examples"][key] for r in fold_results) for key in fold_results[0]["examples"]},
        "train_seconds": sum(r["train"].get("wall_s", 0.0) for r in fold_results),
        "seed": {"cv": p.cv.seed, "train": p.train.seed},
    }
    doc = cv_document([r["model"] for r in fold_results], [r["baselines"] for r in fold_results],
                      sum(r["unparsed"] for r in fold_results), p.train.targets, rounded(extra))
    atomic_write_json(out.metrics / "cv.json", doc)
    sessions, instrument = load_data(p)
    pred: dict[str, dict] = {}
    for fold_scores in scored:
        pred.update(fold_scores["predictions"][p.eval.readout])
    folds = [f["sessions"] for f in folds_doc["folds"]]
    rows = predictions_rows(pred, client_items(sessions), instrument, folds)
    atomic_write_lines(out.metrics / "predictions.jsonl", [json.dumps(r, sort_keys=True) for r in rows])
    write_plots(rows, out.plots)
    return doc


def gate(params: Params | dict, cv: dict, out: Outputs) -> dict:
    """`metrics/gate.json`; raises GateFailed naming every failed check."""
    from care.evaluation.gate import evaluate_gate

    doc = evaluate_gate(cv, params_of(params).gate)
    atomic_write_json(out.metrics / "gate.json", doc)
    return doc


def require_gate(gate_doc: dict) -> None:
    from care.evaluation.gate import raise_if_failed

    raise_if_failed(gate_doc)
