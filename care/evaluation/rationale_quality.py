"""Generated vs reference rationales: corpus BLEU, ROUGE-L F and the grounding rate of quoted spans.

`rationale_quality` returns counts and scores only, never text.
"""

from __future__ import annotations

import re
from typing import Any

_QUOTES = [re.compile(r"“([^”]*)”"), re.compile(r'"([^"]*)"'), re.compile(r"「([^」]*)」")]
_EDGE = " \t\r\n，。！？、；：,.!?;:…"


def quoted_spans(text: str) -> list[str]:
    """Spans quoted with “…”, "…" or 「…」, edge whitespace/punctuation stripped, at least 2 characters."""
    spans = []
    for pattern in _QUOTES:
        for m in pattern.finditer(text):
            span = m.group(1).strip(_EDGE)
            if len(span) >= 2:
                spans.append(span)
    return spans


UNSPACED = {"zh", "ja", "th", "lo", "km", "my"}  # written without spaces between words: scored by character


def _base(language: str) -> str:
    return language.split("-")[0].split("_")[0].lower()


def _unspaced(language: str) -> bool:
    return _base(language) in UNSPACED


class _CharTokenizer:
    """ROUGE tokenisation for languages written without spaces (zh, ja, ...): one token per non-space character."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text if not c.isspace()]


def _bleu(hyps: list[str], refs: list[str], language: str) -> float:
    import sacrebleu

    tokenize = "13a" if not _unspaced(language) else "zh" if _base(language) == "zh" else "char"
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score)


def rationale_quality(pairs: list[tuple[str, str, list[str], str]]) -> dict[str, Any]:
    """Generated vs reference rationales: corpus BLEU (sacrebleu, 0-100), mean ROUGE-L F (0-1), grounding.

    Each pair is (generated, reference, transcript utterances, language). Grounding rate = share of quoted
    spans in the generated rationales found verbatim in one of that session's utterances. With several
    languages, `bleu` is the pair-weighted mean of per-language corpus BLEU (`by_language` has each).
    No text in the result.
    """
    from rouge_score import rouge_scorer

    by_lang: dict[str, dict[str, list]] = {}
    for generated, reference, utterances, language in pairs:
        g = by_lang.setdefault(language, {"hyp": [], "ref": [], "utt": []})
        g["hyp"].append(generated or "")
        g["ref"].append(reference or "")
        g["utt"].append(utterances)
    total = {"n_pairs": 0, "n_quotes": 0, "n_quotes_grounded": 0, "bleu_sum": 0.0, "rouge_sum": 0.0}
    langs: dict[str, dict[str, Any]] = {}
    for language, g in sorted(by_lang.items()):
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CharTokenizer() if _unspaced(language) else None)
        rouge = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(g["hyp"], g["ref"])]
        n_quotes = n_grounded = 0
        for hyp, utts in zip(g["hyp"], g["utt"]):
            for span in quoted_spans(hyp):
                n_quotes += 1
                n_grounded += any(span in u for u in utts)
        n = len(g["hyp"])
        bleu = _bleu(g["hyp"], g["ref"], language)
        langs[language] = {
            "n_pairs": n,
            "bleu": bleu,
            "rouge_l_f": sum(rouge) / n,
            "n_quotes": n_quotes,
            "n_quotes_grounded": n_grounded,
            "grounding_rate": n_grounded / n_quotes if n_quotes else None,
        }
        total["n_pairs"] += n
        total["n_quotes"] += n_quotes
        total["n_quotes_grounded"] += n_grounded
        total["bleu_sum"] += bleu * n
        total["rouge_sum"] += sum(rouge)
    n = total["n_pairs"]
    return {
        "n_pairs": n,
        "bleu": total["bleu_sum"] / n if n else None,
        "rouge_l_f": total["rouge_sum"] / n if n else None,
        "n_quotes": total["n_quotes"],
        "n_quotes_grounded": total["n_quotes_grounded"],
        "grounding_rate": total["n_quotes_grounded"] / total["n_quotes"] if total["n_quotes"] else None,
        "by_language": langs,
    }
