"""The corpus card: arguments, generative parameters and summary statistics. Never any transcript text."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr


def _r(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return round(float(pearsonr(x, y).statistic), 4)


def _f(x: float) -> float:
    return round(float(x), 4)


def build_card(*, name: str, version: str, arguments: dict, instrument: str, params: dict, dims: list[str],
               client_scores: np.ndarray, counselor_scores: np.ndarray, has_counselor: np.ndarray,
               latent: np.ndarray, cue_balance: np.ndarray, n_clients: int, n_counselors: int,
               flags: dict, n_turns: np.ndarray, turn_chars: float, rationale_chars: float,
               quotes_per_rationale: float, language: str) -> dict:
    """`*_scores`, `latent`, `cue_balance`: (n_sessions, n_dims) in `dims` order."""
    hc = has_counselor
    stats = {
        "client_dimension_mean": {d: _f(client_scores[:, k].mean()) for k, d in enumerate(dims)},
        "client_dimension_sd": {d: _f(client_scores[:, k].std(ddof=1)) if len(client_scores) > 1 else 0.0
                                for k, d in enumerate(dims)},
        "counselor_dimension_mean": {d: _f(counselor_scores[hc, k].mean()) if hc.any() else None
                                     for k, d in enumerate(dims)},
        "counselor_vs_client_r": {d: _r(counselor_scores[hc, k], client_scores[hc, k]) for k, d in enumerate(dims)},
        "oracle_ceiling_r": {d: _r(latent[:, k], client_scores[:, k]) for k, d in enumerate(dims)},
        "text_cue_r": {d: _r(cue_balance[:, k], client_scores[:, k]) for k, d in enumerate(dims)},
        "client_dimension_corr": {
            f"{a}-{b}": _r(client_scores[:, i], client_scores[:, j])
            for i, a in enumerate(dims) for j, b in enumerate(dims) if i < j
        },
    }
    unit = "words" if language == "en" else "characters"
    return {
        "generator": name,
        "version": version,
        "arguments": arguments,
        "instrument": instrument,
        "language": language,
        "n_sessions": int(len(client_scores)),
        "n_clients": int(n_clients),
        "n_counselors": int(n_counselors),
        "n_with_counselor_ratings": int(hc.sum()),
        "generative_model": {
            "summary": (
                "Per session a latent goal/task/bond alliance (correlated, plus a client random effect shared "
                "across that client's sessions and a counselor skill offset); counselor lateness lowers the "
                "bond/task latent. Client item ratings = round(latent + occasion noise + item noise) clipped to "
                "the scale; counselor ratings are lenient and weakly linked to the latent. The text draws "
                "behaviours from the latents: per dimension the number of positive vs negative cue exchanges "
                "(clear vs vague goals, collaborative plans vs unactionable advice, attuned vs mechanical "
                "empathy), mm-hmm overuse (low bond), ruptures repaired or not, lateness at the opening, and "
                "polite words over short disengaged replies (low latent). Rationales quote the cue exchanges "
                "verbatim. See care/synth/model.py."
            ),
            "params": params,
        },
        "statistics": stats,
        "behaviour_rates": {k: _f(np.mean(v)) for k, v in flags.items()},
        "text": {
            "mean_utterances": _f(n_turns.mean()),
            "min_utterances": int(n_turns.min()),
            "max_utterances": int(n_turns.max()),
            f"mean_utterance_{unit}": _f(turn_chars),
            f"mean_rationale_{unit}": _f(rationale_chars),
            "mean_quotes_per_rationale": _f(quotes_per_rationale),
        },
        "notes": {
            "oracle_ceiling_r": "Pearson r between the latent dimension and the observed client dimension score.",
            "text_cue_r": "Pearson r between the per-dimension cue balance (positive minus negative cue "
                          "exchanges, over their number + 1) and the observed client dimension score: roughly what "
                          "a reader counting cues can reach.",
        },
    }
