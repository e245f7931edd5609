"""Generated vs reference rationales: corpus BLEU, ROUGE-L F and the grounding rate of quoted spans.

Quotations are parsed as guided decoding writes them (`care.evaluation.grounding.find_quotes`, with the quote
marks of each language's prompt wording); a quote is grounded when it occurs verbatim in one turn of its
session. `rationale_quality` returns counts and scores only, never text; `summarize` pools the folds'.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from care.evaluation.grounding import QuotePairs, find_quotes


def quoted_spans(text: str, pairs: QuotePairs) -> list[str]:
    """The closed, non-empty quotations of `text` (quote marks excluded)."""
    return [text[s:e] for s, e in find_quotes(text, pairs)]


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


def rationale_quality(pairs: list[tuple[str, str, list[str], str]], marks: Mapping[str, QuotePairs]) -> dict[str, Any]:
    """Generated vs reference rationales: corpus BLEU (sacrebleu, 0-100), mean ROUGE-L F (0-1), grounding.

    Each pair is (generated, reference, transcript utterances, language); `marks` holds each language's quote
    marks. Grounding rate = share of the generated rationales' quotations found verbatim in one of that
    session's utterances. With several languages, `bleu` is the pair-weighted mean of per-language corpus
    BLEU (`by_language` has each). No text in the result.
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
            for span in quoted_spans(hyp, marks[language]):
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


QUALITY_MEANS = ("bleu", "rouge_l_f")  # averaged over folds; the quote counts are summed


def summarize(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool per-fold `rationale_quality` results: BLEU and ROUGE-L averaged over the folds that have them,
    pairs and quotes summed, the grounding rate from the pooled counts."""
    out: dict[str, Any] = {"n_pairs": sum(f["n_pairs"] for f in folds)}
    for key in QUALITY_MEANS:
        values = [f[key] for f in folds if f.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    out["n_quotes"] = sum(f["n_quotes"] for f in folds)
    out["n_quotes_grounded"] = sum(f["n_quotes_grounded"] for f in folds)
    out["grounding_rate"] = out["n_quotes_grounded"] / out["n_quotes"] if out["n_quotes"] else None
    return out
