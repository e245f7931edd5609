"""The model card (the package's README.md): what the model is for, the data it saw, what its numbers say.

Everything in it follows the run: the title and wording follow the instrument, adjectives follow the
numbers (`strength`), a baseline that beats the model is said plainly, rationale caveats appear only when
rationales were trained, and the run's warnings (care.evaluation.diagnostics) are listed.
"""

from __future__ import annotations

from typing import Any, Mapping


_POLICY_WORDS = {"keep_end": "keeps its end: whole turns are dropped from the start",
                 "keep_start_end": "keeps its opening and its end: whole turns are dropped from the middle"}


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def strength(r: float | None) -> str:
    """Plain words for a correlation with the clients' ratings."""
    if r is None:
        return "undefined"
    if r < 0:
        return "negative (worse than chance)"
    if r < 0.1:
        return "negligible (no better than chance)"
    if r < 0.3:
        return "weak"
    if r < 0.5:
        return "moderate"
    return "strong"


def _metrics_table(cv: Mapping[str, Any]) -> str:
    """Pearson r (MSE) per dimension for the model (mean +/- std over folds) and each baseline."""
    mean, std = cv.get("mean") or {}, cv.get("std") or {}
    dims = list(mean) or sorted({d for b in (cv.get("baselines") or {}).values() for d in b})
    if not dims:
        return "No cross-validation metrics were recorded.\n"
    lines = ["| system | " + " | ".join(dims) + " |", "|---|" + "---|" * len(dims)]

    def cell(m: Mapping, s: Mapping | None) -> str:
        r = _fmt(m.get("pearson"))
        if s and s.get("pearson") is not None:
            r += f" ± {s['pearson']:.2f}"
        return f"{r} ({_fmt(m.get('mse'))})"

    lines.append("| this model | " + " | ".join(cell(mean.get(d, {}), std.get(d)) for d in dims) + " |")
    for name, b in (cv.get("baselines") or {}).items():
        lines.append(f"| baseline: {name} | " + " | ".join(cell(b.get(d, {}), None) for d in dims) + " |")
    return "\n".join(lines) + "\n\nCells: Pearson r (MSE) against the clients' own ratings, mean ± std over folds.\n"


def _verdicts(cv: Mapping[str, Any]) -> list[str]:
    """Per dimension the strength of r, and every baseline that beats the model on r or MSE."""
    lines = []
    for dim, m in (cv.get("mean") or {}).items():
        r, mse = m.get("pearson"), m.get("mse")
        lines.append(f"- {dim}: r = {_fmt(r)}, {strength(r)}.")
        for name, b in (cv.get("baselines") or {}).items():
            br, bmse = (b.get(dim) or {}).get("pearson"), (b.get(dim) or {}).get("mse")
            worse = []
            if br is not None and (r is None or br > r):
                worse.append(f"r {_fmt(r)} vs {_fmt(br)}")
            if bmse is not None and (mse is None or bmse < mse):
                worse.append(f"MSE {_fmt(mse)} vs {_fmt(bmse)}")
            if worse:
                lines.append(f"  - worse than baseline {name} on {dim}: {'; '.join(worse)}.")
    return lines


def _intervals_section(cv: Mapping[str, Any], instrument) -> str:
    """Honest coverage and mean width of the calibrated intervals per dimension and level, and what they mean."""
    iv = cv.get("intervals")
    if not iv:
        return "No intervals were calibrated for this model.\n"
    levels = [str(x) for x in iv["levels"]]
    lines = ["| dimension | " + " | ".join(f"{x}%: coverage | {x}%: mean width" for x in levels) + " |",
             "|---|" + "---|---|" * len(levels)]
    for dim, cells in iv["dimensions"].items():
        row = []
        for x in levels:
            c = cells.get(x) or {}
            row += [f"{_fmt(100 * c['coverage'])}%" if c.get("coverage") is not None else "n/a", _fmt(c.get("width"))]
        lines.append(f"| {dim} | " + " | ".join(row) + " |")
    items = list(iv["items"].values())
    item_line = ", ".join(
        f"{x}%: coverage {_fmt(100 * _avg([c[x]['coverage'] for c in items]))}%, "
        f"width {_fmt(_avg([c[x]['width'] for c in items]))}"
        for x in levels)
    widths = iv.get("mean_width") or {}
    low, high = instrument.scale.points[0], instrument.scale.points[-1]
    return (f"{chr(10).join(lines)}\n\n"
            f"What an interval means: for sessions like the training data, {levels[0]}% of clients' own scores fell "
            f"inside the {levels[0]}% interval (and likewise for the other levels); it says nothing about a session "
            "unlike them.\n"
            f"Measured honestly: each fold's intervals were calibrated on the other folds' out-of-fold residuals "
            f"and checked on that fold ({iv['n_sessions']} sessions in all). Items (mean over the "
            f"{len(items)} items): {item_line}. Intervals are clipped to the scale ({low}-{high}).\n"
            f"Method: {iv['method']} split-conformal (mean width {_fmt(widths.get('absolute'))} absolute, "
            f"{_fmt(widths.get('normalized'))} normalised by the spread of the model's own score distribution; "
            "the narrower is used).\n")


def _avg(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _rationale_lines(cv: Mapping[str, Any]) -> list[str]:
    """Grounding rate, BLEU and ROUGE-L of the held-out rationale sample, with and without grounded quotes."""
    rq = cv.get("rationale_quality")
    if not rq:
        return []
    lines = [f"Held-out rationale sample: {rq['n_pairs']} (session, item) pairs, generated both ways "
             f"(this package: {'grounded' if rq.get('grounded_quotes') else 'free'} quotes).", "",
             "| decoding | grounding rate | quotes | BLEU | ROUGE-L F | generation time |", "|---|---|---|---|---|---|"]
    for mode, name in (("constrained", "grounded (constrained decoding)"), ("unconstrained", "free")):
        m = rq.get(mode) or {}
        rate = m.get("grounding_rate")
        lines.append(f"| {name} | {_fmt(rate) if rate is not None else 'n/a (no quotes)'} | {m.get('n_quotes', 'n/a')} | "
                     f"{_fmt(m.get('bleu'))} | {_fmt(m.get('rouge_l_f'))} | {_fmt(m.get('seconds'))} s |")
    lines += ["", "Grounding rate: share of quotations found verbatim in one turn of the session's transcript. With "
              "grounded quotes it is 1 by construction: inside quotation marks the model may only copy a span of "
              "a turn; outside them it writes freely, and what it writes there is not checked."]
    return lines


def _data_lines(metadata: Mapping[str, Any], cv: Mapping[str, Any]) -> list[str]:
    sha = metadata.get("data_sha256")
    lines = [f"- Data: {metadata.get('data_path', 'n/a')} (sha256 {sha[:16] + '...' if sha else 'n/a'}), "
             f"{metadata.get('n_sessions', 'n/a')} sessions; data version {metadata.get('data_version', 'n/a')}"]
    if metadata.get("data_dirty") is True:
        lines.append(f"- **Data not as recorded**: the bytes trained on differ from what DVC records for them (md5 "
                     f"{metadata.get('data_dvc_md5') or 'n/a'}): unrecorded changes or an interrupted intake. The data "
                     "version above is their own sha256; `dvc add` would record them.")
    elif metadata.get("data_dirty") is False:
        lines.append("- The data matches its DVC record (md5 recomputed from the bytes trained on).")
    t = cv.get("transcripts") or {}
    if t:
        lines.append(f"- Transcripts cut to fit the context: {t.get('truncated')} of {t.get('sessions')} "
                     f"({_fmt(100 * t['truncated_share']) if t.get('truncated_share') is not None else 'n/a'}%); "
                     f"mean {_fmt(t.get('mean_tokens'))} transcript tokens per session")
    share = cv.get("score_only_fallback_share")
    lines.append(f"- Targets trained: {cv.get('targets', metadata.get('targets', 'n/a'))}"
                 + (f" (requested {cv.get('targets_requested')}; {_fmt(100 * share)}% of sessions had no rationales)"
                    if share else ""))
    return lines


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def _revision(revision: str | None) -> str:
    """The hub commit a hub base was pinned to, when it was one."""
    return f" at hub commit {revision}" if revision else ""


def _base_line(base: Mapping[str, Any] | None) -> str:
    """How the embedded base was built, when the release has one."""
    if not base:
        return ""
    langs = ", ".join(base.get("corpus_languages") or []) or "n/a"
    return (f"\n- Embedded base: digest {str(base.get('digest'))[:16]}..., built by `care base build` "
            f"(model.base_build): {base.get('layers')} layers x {base.get('hidden_size')}, vocabulary "
            f"{base.get('vocab_size')}, {_count(base.get('parameters'))} parameters, pretrained on "
            f"{_count(base.get('pretrain_tokens'))} tokens of unlabelled synthetic transcripts ({langs}) and text in "
            f"{base.get('script_locales')} locales' scripts; held-out LM loss {_fmt(base.get('heldout_loss'))}")


def _instrument_lines(instrument) -> list[str]:
    """The scale, the dimensions with their items, and the items in no dimension."""
    scale, lang = instrument.scale, instrument.languages[0]
    ends = f"{scale.min} = {scale.labels[scale.min][lang]} ... {scale.max} = {scale.labels[scale.max][lang]}"
    answers = "" if scale.answers is None else f"; the model answers {'/'.join(scale.answer_symbols)}"
    lines = [f"- {len(instrument.item_ids)} items, each on a {scale.min}-{scale.max} scale ({ends}{answers})"]
    for dim, ids in instrument.items_by_dimension.items():
        lines.append(f"- {dim}: the mean of items {', '.join(ids)}")
    loose = [i.id for i in instrument.items if i.dimension is None]
    if loose:
        lines.append(f"- In no dimension (scored and evaluated per item only): items {', '.join(loose)}")
    return lines


def model_card(metadata: Mapping[str, Any], instrument) -> str:
    """The package's README.md for `metadata` (the manifest's metadata) and the instrument it scores."""
    s = metadata["scoring"]
    gate = metadata.get("gate") or {}
    cv = metadata.get("cv") or {}
    langs = ", ".join(s["languages"])
    what = instrument.description.rstrip(". ") or f"{len(instrument.item_ids)} items"
    warnings = [w for w in cv.get("warnings") or [] if w.get("scope") == "cv"]
    rationales = cv.get("targets", metadata.get("targets")) in ("rationale", "mixed")
    limitations = [
        f"- Trained on the language(s) and counseling culture of its training data ({langs}); other languages,\n"
        "  settings or populations are untested.",
        *(["- Rationales imitate expert-written references; they can sound convincing and still be wrong."]
          if rationales else []),
        "- Text-only: the model tends to trust polite wording and misses behaviour outside the words, such as\n"
        "  lateness, missed sessions or disengagement.",
        "- The final model is fit on all data after cross-validation, with no checkpoint selection; the metrics\n"
        "  above are estimates from the folds, not measurements of this exact model.",
        "- Single-session scores are noisy: read them next to the cross-validated error above.",
    ]
    not_applied = gate.get("not_applied") or []
    loosened = gate.get("loosened") or []
    gate_lines = [f"Release gate: {'passed' if gate.get('passed') else 'NOT passed' if gate else 'n/a'}."]
    gate_lines += [f"- not applied: {c['check']} ({c['reason']})" for c in not_applied]
    gate_lines += [f"- weaker than the default gate: {x}" for x in loosened]
    warning_lines = [f"- {w['message']}" + ("" if w.get("value") is None else f" ({w['value']} vs {w['threshold']})")
                     for w in warnings] or ["- none"]
    rationale_usage = " (and rationale)" if rationales else ""
    return f"""# CARE model: {instrument.name}

Predicts how a client would rate a counseling session on {instrument.name} ({what}): each item on its
scale, and each dimension as the mean of its items, from the session transcript{
', with an optional generated rationale per item' if rationales else ''}.

{chr(10).join(_instrument_lines(instrument))}

## Intended use
Decision support for counselors and supervisors: a prompt for reflection and supervision, read next to the
transcript and the client's own feedback. It is **not** a diagnosis, not an assessment of the client, and not
a measure of a counselor's performance on its own; never use it to make decisions about a person.

## Data
{chr(10).join(_data_lines(metadata, cv))}
- Code commit: {metadata.get('git_commit', 'n/a')}
- Params digest: {metadata.get('params_digest', 'n/a')}
- Base model: {metadata.get('base_model', 'n/a')}{_revision(metadata.get('base_revision'))} (fine-tune: {metadata.get('finetune', 'n/a')}){_base_line(metadata.get('base'))}
- Transcript language(s): {langs}

## Cross-validated metrics (client-grouped folds)
{_metrics_table(cv)}
{chr(10).join(gate_lines)}

## What the numbers say
{chr(10).join(_verdicts(cv))}

## Calibrated intervals
{_intervals_section(cv, instrument)}
{chr(10).join(["## Rationales", *_rationale_lines(cv), ""]) if rationales and cv.get("rationale_quality") else ""}
## Warnings from the run
{chr(10).join(warning_lines)}

## Limitations
{chr(10).join(limitations)}

## How to score
```
care score --model THIS_DIR sessions.jsonl --out scores.jsonl [--rationales] [--device cpu|cuda]
```
Input: the annotation JSONL format (ratings not needed). Output: one line per session with per-item
expected score, distribution, greedy score{rationale_usage}, and per-dimension scores, each with its
calibrated `interval` per level when the package has calibration.json; never the transcript (rationales
quote it, and list where: `quotes: [{{turn, start, end}}]`). `care report` turns the output into an HTML page.
Scoring config: max_length {s['max_length']}, target_tokens {s['target_tokens']}, context policy {s['context_policy']}
(a longer transcript {_POLICY_WORDS[s['context_policy']]}), prompt version {s['prompt_version']}.
The package is verified against `manifest.json` before loading; a changed, missing or extra file is refused.
"""
