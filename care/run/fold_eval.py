"""One held-out fold: score it with the fine-tuned model (and the zero-shot base), then its metrics.

The rationale sample is generated twice, with and without grounded quotes (care.evaluation.grounding), so
the metrics compare both and show what the constraint costs in time.

Scores are cached by the fit's key, the fold's sessions, the eval params and the scoring code, so a rerun
of a finished fold reads them back instead of scoring again; an entry is published once (`care.cache`).
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

from care.cache import cache_root, digest, publish_file, source_digest
from care.errors import CareError
from care.params import EvalParams, FitParams
from care.run.artifacts import ModelDir
from care.run.data import DataRef, load_data, split
from care.run.documents import FoldMetrics, FoldScores, FoldsPlan
from care.run.fits import builder, fit_record, load_fit

READOUTS = ("expected", "greedy")
_SCORING_CODE = ("care.evaluation.torch_scoring", "care.evaluation.rationale_quality", "care.run.fold_eval")


def _sample_for_rationales(test: list, n_pairs: int, n_items: int, seed: int) -> list:
    with_refs = [s for s in test if s.rationales]
    n_sessions = min(len(with_refs), math.ceil(n_pairs / n_items)) if n_pairs > 0 else 0
    return random.Random(seed).sample(with_refs, n_sessions) if n_sessions else []


def _rationale_quality(model, tokenizer, build, test, eval: EvalParams, seed: int) -> dict | None:
    """The sample's rationales generated with (`constrained`) and without (`unconstrained`) grounded quotes:
    BLEU, ROUGE-L, grounding rate and generation seconds of each; `grounded_quotes` names the one in use."""
    from care.evaluation.rationale_quality import rationale_quality
    from care.evaluation.torch_scoring import score_sessions

    sample = _sample_for_rationales(test, eval.rationale_sample, len(build.instrument.item_ids), seed)
    if not sample:
        return None
    marks = {s.language: build.instrument.prompt_texts(s.language).quotes for s in sample}
    out: dict = {"n_pairs": min(eval.rationale_sample, len(sample) * len(build.instrument.item_ids)),
                 "grounded_quotes": eval.grounded_quotes}
    for mode, grounded in (("constrained", True), ("unconstrained", False)):
        start = time.perf_counter()
        try:
            generated = score_sessions(model, tokenizer, build, sample, batch_size=eval.batch_size, rationales=True,
                                       max_new_tokens=eval.rationale_max_new_tokens, grounded_quotes=grounded,
                                       progress=False)
        except CareError as exc:  # grounded quotes impossible here (tokenizer, quote marks) and not asked for
            if not grounded or eval.grounded_quotes:
                raise
            out[mode], out["constrained_skipped"] = None, str(exc)
            continue
        seconds = time.perf_counter() - start
        pairs = []
        for session, scored in zip(sample, generated):
            utterances = [t.text for t in session.turns]
            for item_id, item in scored.items.items():
                if len(pairs) < eval.rationale_sample:
                    pairs.append((item.rationale or "", session.rationales[item_id], utterances, session.language))
        out[mode] = {**rationale_quality(pairs, marks), "seconds": seconds}
    return out


def score_fold(data: DataRef, folds: FoldsPlan, k: int, fit: FitParams, eval: EvalParams, model: ModelDir,
               base: ModelDir, cv_seed: int) -> FoldScores:
    """Item-level predictions for both readouts, unparsed counts, digit mass and rationale quality of fold `k`
    (plus the zero-shot base's predictions when `eval.zero_shot`)."""
    held = folds.held_out(k)
    # interval levels are applied after scoring (care.run.aggregate): changing them never rescores a fold
    key = digest([model.key, k, held, data.sha256, eval.model_dump(mode="json", exclude={"interval_levels"}), cv_seed,
                  source_digest(*_SCORING_CODE)])[:24]
    cached = cache_root() / "scores" / f"{key}.json"
    if cached.exists():
        return FoldScores.model_validate(json.loads(cached.read_text("utf-8")))
    from care.evaluation.intervals import distribution_sd
    from care.evaluation.readout import readout
    from care.evaluation.torch_scoring import score_sessions

    sessions, instrument = load_data(data)
    _, test = split(sessions, folds, k)
    record = fit_record(model)
    lm, tokenizer = load_fit(model, base)
    build = builder(fit, tokenizer, instrument)
    scores = score_sessions(lm, tokenizer, build, test, batch_size=eval.batch_size)
    preds = {mode: readout(scores, instrument, mode) for mode in READOUTS}
    masses = [it.digit_mass for s in scores for it in s.items.values()]
    tokens = [s.prefix_tokens for s in scores]
    result: dict[str, Any] = {
        "fold": k,
        "transcripts": {"sessions": len(test), "truncated": sum(s.truncated for s in scores),
                        "mean_tokens": sum(tokens) / len(tokens) if tokens else None},
        "predictions": {mode: preds[mode][0] for mode in READOUTS},
        # spread (sd) of each item's digit distribution: what normalised intervals scale by
        "spread": {s.session_id: {i: distribution_sd(it.distribution, instrument.scale.points)
                                  for i, it in s.items.items()} for s in scores},
        "unparsed": {mode: preds[mode][2] for mode in READOUTS},
        "digit_mass": {"mean": sum(masses) / len(masses), "min": min(masses)},
        "rationale_quality": None,
        "train": record["train"],
        "examples": record["examples"],
    }
    if fit.train.targets == "rationale" and eval.rationale_sample > 0:
        result["rationale_quality"] = _rationale_quality(lm, tokenizer, build, test, eval, cv_seed + k)
    del lm
    if eval.zero_shot:
        from care.model.presets import load_base

        base_lm, base_tok = load_base(base.path, fit)
        # only its expected score is read: no greedy fallback decoding (max_new_tokens=0)
        zs = score_sessions(base_lm, base_tok, builder(fit, base_tok, instrument), test, batch_size=eval.batch_size,
                            max_new_tokens=0)
        zs_items, _, zs_unparsed = readout(zs, instrument, "expected")
        result["zero_shot"] = {"predictions": zs_items, "unparsed": zs_unparsed}
    # published once; when another run published this fold first, its (equal) entry is the one returned
    scores = FoldScores.model_validate(result)
    text = json.dumps(scores.as_json(), indent=2, ensure_ascii=False) + "\n"
    published = publish_file(cached, text.encode("utf-8"))
    return FoldScores.model_validate(json.loads(published.read_text("utf-8")))


def fold_metrics(data: DataRef, folds: FoldsPlan, k: int, eval: EvalParams, scored: FoldScores) -> FoldMetrics:
    """Fold `k`'s metrics for the model (both readouts) and the baselines on the same sessions, and the
    fold's warnings (care.evaluation.diagnostics)."""
    from care.evaluation.baselines import baseline_results, client_items
    from care.evaluation.diagnostics import prediction_spread, warnings_for
    from care.evaluation.metrics import evaluate

    sessions, instrument = load_data(data)
    train, test = split(sessions, folds, k)
    true = client_items(test)
    readouts = {mode: evaluate(scored.predictions[mode], true, instrument) for mode in READOUTS}
    baselines = baseline_results(train, test, instrument, eval.helper_proxy or None, text=eval.text_baseline)
    if scored.zero_shot is not None:
        baselines["zero_shot"] = evaluate(scored.zero_shot.predictions, true, instrument)
    model = readouts[eval.readout]
    spread = prediction_spread(scored.predictions[eval.readout], instrument)
    warnings = warnings_for(
        f"fold {k}", dimensions=model["dimensions"], train_mean=baselines["train_mean"]["dimensions"],
        digit_mass=scored.digit_mass.mean, spread=spread, truncated=scored.transcripts.truncated,
        sessions=scored.transcripts.sessions, thresholds=eval.warnings)
    return FoldMetrics(
        fold=k, model=model, prediction_sd=spread, transcripts=scored.transcripts, warnings=warnings,
        readouts=readouts, baselines=baselines, unparsed=scored.unparsed[eval.readout],
        unparsed_by_readout=scored.unparsed, digit_mass=scored.digit_mass, rationale_quality=scored.rationale_quality,
        train=scored.train, examples=scored.examples,
    )
