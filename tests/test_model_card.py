"""The model card follows the run: instrument wording, adjectives from the numbers, plain "worse than
baseline" lines, rationale caveats only when rationales were trained, the data actually used, warnings."""

from __future__ import annotations

from care.data.instrument import load_instrument
from care.release.model_card import model_card, strength


def _m(r, mse):
    return {"pearson": r, "spearman": r, "mse": mse}


def _metadata(r: float, targets: str, warnings=()):
    return {
        "scoring": {"max_length": 1024, "target_tokens": 64, "context_policy": "keep_end", "languages": ["en"],
                    "prompt_version": "abc", "prompt_date": "2024-07-26", "readout": "expected", "grounded_quotes": True},
        "data_version": "sha256:" + "0" * 64, "data_path": "/elsewhere/sessions.jsonl", "data_sha256": "0" * 64,
        "n_sessions": 200, "targets": targets,
        "gate": {"passed": True, "not_applied": [{"check": "bond.pearson > counselor.bond.pearson",
                                                  "reason": "baseline counselor has no values for bond in this data (n = 0)"}],
                 "loosened": ["beat_on_pearson lacks counselor (default)"]},
        "cv": {"mean": {"bond": _m(r, 0.9), "task": _m(r, 0.8)}, "std": {},
               "baselines": {"tfidf": {"bond": _m(0.2, 0.7), "task": _m(0.15, 0.85)},
                             "train_mean": {"bond": _m(None, 0.85), "task": _m(None, 0.79)}},
               "targets": targets, "targets_requested": "rationale",
               "score_only_fallback_share": 1.0 if targets == "score_only" else 0.0,
               "transcripts": {"sessions": 200, "truncated": 200, "truncated_share": 1.0, "mean_tokens": 4866.0},
               "warnings": list(warnings)},
    }


def test_strength_follows_the_numbers():
    assert [strength(r) for r in (None, -0.2, 0.02, 0.2, 0.4, 0.6)] == [
        "undefined", "negative (worse than chance)", "negligible (no better than chance)", "weak", "moderate", "strong"]


def test_a_model_that_learnt_nothing_is_described_as_such():
    inst = load_instrument("esconv-seeker")
    warning = {"scope": "cv", "check": "truncated_share", "dimension": None, "value": 1.0, "threshold": 0.25,
               "message": "200 of 200 transcripts were cut to fit the context (model.max_length)"}
    card = model_card(_metadata(0.01, "score_only", [warning]), inst)
    assert card.startswith("# CARE model: esconv-seeker")
    assert "working alliance" not in card.lower()
    assert "- bond: r = 0.01, negligible (no better than chance)." in card
    assert "moderate" not in card
    assert "worse than baseline tfidf on bond: r 0.01 vs 0.20; MSE 0.90 vs 0.70." in card
    assert "worse than baseline train_mean on task: MSE 0.80 vs 0.79." in card
    assert "Rationales imitate" not in card and "(and rationale)" not in card
    assert "/elsewhere/sessions.jsonl" in card and "sha256:" in card
    assert "200 of 200 (100.00%)" in card and "4866.00 transcript tokens" in card
    assert "Targets trained: score_only (requested rationale; 100.00% of sessions had no rationales)" in card
    assert "- 200 of 200 transcripts were cut" in card
    assert "not applied: bond.pearson > counselor.bond.pearson" in card
    assert "weaker than the default gate: beat_on_pearson lacks counselor (default)" in card


def test_rationale_caveats_only_when_rationales_were_trained():
    card = model_card(_metadata(0.6, "rationale"), load_instrument("wai-sr"))
    assert "Rationales imitate" in card and "strong" in card and "- none" in card


def test_card_gives_interval_coverage_and_grounding_both_ways():
    cell = lambda c, w: {"coverage": c, "width": w, "n": 200}  # noqa: E731
    meta = _metadata(0.4, "rationale")
    meta["cv"]["intervals"] = {
        "method": "absolute", "levels": [80, 90], "n_sessions": 200,
        "dimensions": {"bond": {"80": cell(0.815, 1.62), "90": cell(0.905, 2.05)},
                       "task": {"80": cell(0.79, 1.7), "90": cell(0.9, 2.2)}},
        "items": {"1": {"80": cell(0.8, 2.5), "90": cell(0.9, 3.0)}, "2": {"80": cell(0.82, 2.7), "90": cell(0.92, 3.2)}},
        "mean_width": {"absolute": 2.37, "normalized": 2.41}}
    meta["cv"]["rationale_quality"] = {
        "n_pairs": 48, "grounded_quotes": True, "time_ratio": 1.2,
        "constrained": {"n_quotes": 40, "n_quotes_grounded": 40, "grounding_rate": 1.0, "bleu": 12.5, "rouge_l_f": 0.31,
                        "seconds": 6.0},
        "unconstrained": {"n_quotes": 50, "n_quotes_grounded": 1, "grounding_rate": 0.02, "bleu": 13.0,
                          "rouge_l_f": 0.32, "seconds": 5.0}}
    card = model_card(meta, load_instrument("wai-sr"))
    assert "| bond | 81.50% | 1.62 | 90.50% | 2.05 |" in card
    assert "for sessions like the training data, 80% of clients' own scores fell inside the 80% interval" in card
    assert "80%: coverage 81.00%, width 2.60" in card and "Method: absolute split-conformal" in card
    assert "| grounded (constrained decoding) | 1.00 | 40 | 12.50 | 0.31 | 6.00 s |" in card
    assert "| free | 0.02 | 50 | 13.00 | 0.32 | 5.00 s |" in card
    plain = model_card(_metadata(0.4, "score_only"), load_instrument("wai-sr"))
    assert "No intervals were calibrated" in plain and "## Rationales" not in plain
