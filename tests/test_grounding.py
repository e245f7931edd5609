"""Grounded quotes: the parse rule, the byte-level constraint (tokens that split characters, tokens holding an
opening mark and text, tokens spanning the closing mark), and the property that every quote of a guided
rationale is a verbatim span of a turn, on random zh / en / mixed transcripts under random and adversarial
logits, through the guide alone and through the shared scoring loop (care.evaluation.readout)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from care.data.instrument import load_instrument
from care.data.schema import Session, Turn
from care.errors import CareError
from care.evaluation import readout
from care.evaluation.grounding import (QuoteGuide, TranscriptIndex, find_quotes, locate, locate_quotes,
                                       single_char_marks, token_bytes)
from care.evaluation.rationale_quality import rationale_quality
from care.model.prompts import PromptBuilder, PromptConfig, item_block
from care.params import ModelParams

ZH = "我你他的了是在有不这个们来到时大工作压力睡觉焦虑沟通领导家人朋友感觉咨询师很好吗，。！？"
EN = "abcdefghijklmnopqrstuvwxyz ABCIT,.!?'"
ODD = "“”「」\"éü😀👍\n"
ZH_PAIRS = [("“", "”"), ("「", "」"), ('"', '"')]
EN_PAIRS = [('"', '"'), ("“", "”")]
SPANNING = ["“我", "”，", "」。", '"I', '."', "。”他", "「好", "”“", "😀”"]  # tokens across quote marks


@pytest.fixture(scope="module")
def tok():
    from care.model.tiny import train_tokenizer

    inst = load_instrument("wai-sr")
    rng = np.random.default_rng(0)
    alphabet = list(ZH + EN + ODD)
    corpus = ["".join(rng.choice(alphabet, 60)) for _ in range(300)]
    corpus += [item_block(inst, i, lang) for i in inst.item_ids for lang in ("zh", "en")] + ["0123456789\n"] * 5
    tokenizer = train_tokenizer(corpus, vocab_size=700)
    tokenizer.add_tokens(SPANNING)
    return tokenizer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _one(tok, text: str) -> int:
    ids = _ids(tok, text)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def _logits(vocab: int, prefer: list[int], rest: float = 0.0) -> np.ndarray:
    out = np.full(vocab, rest)
    for rank, t in enumerate(prefer):
        out[t] = 100.0 - rank
    return out


# ---------------------------------------------------------------------------------------- the parse rule


def test_find_quotes_rule():
    assert find_quotes("a“bc”d「e」", ZH_PAIRS) == [(2, 4), (7, 8)]
    assert find_quotes("“a「b」c”", ZH_PAIRS) == [(1, 6)]  # inside a quotation other marks are text
    assert find_quotes('say "x" then "yz"', EN_PAIRS) == [(5, 6), (14, 16)]
    assert find_quotes("“open but never closed", ZH_PAIRS) == []
    assert find_quotes("empty “” quote", ZH_PAIRS) == []
    assert locate("压力", ["你好", "工作压力很大"]) == {"turn": 1, "start": 2, "end": 4}
    assert locate("不在", ["你好"]) is None
    found = locate_quotes("他说“压力”和“没有的话”", ["你好", "工作压力很大"], ZH_PAIRS)
    assert found == [{"turn": 1, "start": 2, "end": 4}]


def test_rationale_quality_counts_with_the_languages_marks():
    utts = ["I have been so stressed at work lately"]
    q = rationale_quality([('He said "stressed at work" and "I love my boss".', "ref", utts, "en")],
                          {"en": EN_PAIRS})
    assert (q["n_quotes"], q["n_quotes_grounded"], q["grounding_rate"]) == (2, 1, 0.5)


def test_refusals(tok):
    with pytest.raises(CareError, match="single characters"):
        single_char_marks([("<<", ">>")], "xx")
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    word = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")))
    with pytest.raises(CareError, match="byte-level BPE"):
        token_bytes(word)
    assert token_bytes(tok) is token_bytes(tok)  # built once per tokenizer


# ------------------------------------------------------------------------------- the byte-level constraint


def _guide(tok, turns, pairs=ZH_PAIRS) -> QuoteGuide:
    g = QuoteGuide(TranscriptIndex(turns, pairs, token_bytes(tok), "zh"))
    g.choose(_logits(len(tok), [_one(tok, "\n")]))
    return g


def test_a_token_with_an_opening_mark_and_text_is_allowed_only_where_that_text_is_in_a_turn(tok):
    vocab, open_wo = len(tok), _one(tok, "“我")
    fallback = _one(tok, "x")
    assert _guide(tok, ["我很好"]).choose(_logits(vocab, [open_wo, fallback])) == open_wo
    assert _guide(tok, ["你很好"]).choose(_logits(vocab, [open_wo, fallback])) == fallback


def test_closing_mark_only_after_a_non_empty_span_and_tokens_spanning_it(tok):
    vocab = len(tok)
    g = _guide(tok, ["我很好，你呢"])
    assert g.choose(_logits(vocab, [_one(tok, "“")])) == _one(tok, "“")
    close_comma = _one(tok, "”，")
    # right after the opening mark the quote may not close: the best allowed token continues the span
    chosen = g.choose(_logits(vocab, [close_comma, _one(tok, "”"), _one(tok, "我")]))
    assert chosen == _one(tok, "我") and g.in_quote
    assert g.choose(_logits(vocab, [close_comma])) == close_comma and not g.in_quote  # closes, then writes freely
    text = token_bytes(tok).decode([_one(tok, "\n"), _one(tok, "“"), _one(tok, "我"), close_comma])
    assert locate_quotes(text.split("\n", 1)[1], ["我很好，你呢"], ZH_PAIRS) == [{"turn": 0, "start": 0, "end": 1}]


def test_spans_never_start_or_end_inside_a_character(tok):
    vocab = len(tok)
    table = token_bytes(tok)
    byte_token = {b[0]: i for i, b in enumerate(table.bytes) if b is not None and len(b) == 1}
    wo = "我".encode()  # e6 88 91
    g = _guide(tok, ["我们"])
    g.choose(_logits(vocab, [_one(tok, "“")]))
    # a continuation byte cannot start the span
    assert g.choose(_logits(vocab, [byte_token[wo[1]], byte_token[wo[0]]])) == byte_token[wo[0]]
    # half a character: the closing mark is not allowed yet, the rest of the character is
    close = _one(tok, "”")
    assert g.choose(_logits(vocab, [close, byte_token[wo[1]]])) == byte_token[wo[1]]
    assert g.choose(_logits(vocab, [close, byte_token[wo[2]]])) == byte_token[wo[2]]
    assert g.choose(_logits(vocab, [close])) == close


def test_no_eos_inside_a_quote_and_the_last_token_closes_when_it_can(tok):
    vocab = len(tok)
    g = _guide(tok, ["我很好"])
    g.choose(_logits(vocab, [_one(tok, "“")]))
    g.choose(_logits(vocab, [_one(tok, "我")]))
    assert g.choose(_logits(vocab, [tok.eos_token_id, _one(tok, "很")])) == _one(tok, "很")
    last = g.choose(_logits(vocab, [_one(tok, "好"), _one(tok, "”，"), _one(tok, "”")]), last=True)
    assert last == _one(tok, "”，") and not g.in_quote


def test_a_quotation_cannot_open_on_a_transcript_of_closing_marks(tok):
    g = _guide(tok, ["”"])
    assert g.choose(_logits(len(tok), [_one(tok, "“"), _one(tok, "x")])) == _one(tok, "x")


# --------------------------------------------------------------------------------------------- property

_alphabets = {"zh": ZH + "“”「」", "en": EN + '"“”', "mixed": ZH + EN + ODD}
turn_text = st.sampled_from(sorted(_alphabets)).flatmap(lambda k: st.text(alphabet=_alphabets[k], min_size=1, max_size=30))
transcripts = st.lists(turn_text, min_size=1, max_size=4)
BIASES = ("random", "open", "close", "eos", "open+close")


def _biased(tok, rng: np.random.Generator, bias: str, rows: int) -> np.ndarray:
    vocab = len(tok)
    out = rng.normal(0, 2, size=(rows, vocab))
    table = token_bytes(tok)
    marks = {"open": "“「\"", "close": "”」\""}
    for name, chars in marks.items():
        if name in bias:
            hold = [i for i, b in enumerate(table.bytes) if b and any(c.encode() in b for c in chars)]
            out[:, hold] += 6
    if bias == "eos":
        out[:, tok.eos_token_id] += 5
    out[rng.random(rows) < 0.3, _one(tok, "\n")] += 12  # reach the rationale line early
    return out


def _grounded(rationale: str, turns: list[str], pairs) -> tuple[int, int]:
    spans = [rationale[s:e] for s, e in find_quotes(rationale, pairs)]
    return len(spans), sum(any(span in t for t in turns) for span in spans)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=transcripts, language=st.sampled_from(["zh", "en"]), bias=st.sampled_from(BIASES),
       seed=st.integers(0, 2**31 - 1))
def test_property_every_guided_quote_is_a_verbatim_span(tok, turns, language, bias, seed):
    pairs = ZH_PAIRS if language == "zh" else EN_PAIRS
    index = TranscriptIndex(turns, pairs, token_bytes(tok), language)
    rng = np.random.default_rng(seed)
    g, ids = QuoteGuide(index), []
    steps = 40
    for step, row in enumerate(_biased(tok, rng, bias, steps)):
        ids.append(g.choose(row, last=step == steps - 1))
        if ids[-1] == tok.eos_token_id:
            break
    text = token_bytes(tok).decode(ids)
    rationale = text.split("\n", 1)[1] if "\n" in text else ""
    n, grounded = _grounded(rationale, turns, pairs)
    event(f"quotes: {min(n, 3)}{'+' if n >= 3 else ''}")
    assert grounded == n
    located = locate_quotes(rationale, turns, pairs)
    assert len(located) == n
    for (s, e), q in zip(find_quotes(rationale, pairs), located):
        assert turns[q["turn"]][q["start"]:q["end"]] == rationale[s:e]


class RandomBackend:
    """A `readout.Backend` whose logits are random (seeded, biased): what an adversarial model could say."""

    def __init__(self, tok, seed: int, bias: str):
        self.tok, self.rng, self.bias = tok, np.random.default_rng(seed), bias

    def forward(self, ids, mask, positions, past):
        return _biased(self.tok, self.rng, self.bias, ids.shape[0]), past

    def select(self, past, rows):
        return past

    def empty_past(self, batch):
        return None


def _sessions(turns_list: list[list[str]], language: str) -> list[Session]:
    return [Session(session_id=f"s{k}", language=language,
                    turns=[Turn(speaker=("counselor", "client")[t % 2], text=x) for t, x in enumerate(turns)])
            for k, turns in enumerate(turns_list)]


_BUILDERS: dict[int, PromptBuilder] = {}


def _score(tok, sessions, seed, bias, grounded, shared=True):
    if id(tok) not in _BUILDERS:
        _BUILDERS[id(tok)] = PromptBuilder(tok, load_instrument("wai-sr"),
                                             PromptConfig.from_params(ModelParams(max_length=4096, target_tokens=64)))
    builder = _BUILDERS[id(tok)]
    return readout.score_sessions(RandomBackend(tok, seed, bias), builder, sessions, eos_ids=[tok.eos_token_id],
                                  batch_size=5, rationales=True, max_new_tokens=24, shared_cache=shared,
                                  progress=False, grounded_quotes=grounded)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=transcripts, language=st.sampled_from(["zh", "en"]), bias=st.sampled_from(BIASES),
       seed=st.integers(0, 2**31 - 1), shared=st.booleans())
def test_property_scoring_loop_rationales_are_grounded(tok, turns, language, bias, seed, shared):
    (session,) = _sessions([turns], language)
    (scored,) = _score(tok, [session], seed, bias, grounded=True, shared=shared)
    pairs = load_instrument("wai-sr").prompt_texts(language).quotes
    for item in scored.items.values():
        n, grounded = _grounded(item.rationale, turns, pairs)
        event(f"item quotes: {min(n, 2)}{'+' if n >= 2 else ''}")
        assert grounded == n and len(item.quotes) == n
        for (s, e), q in zip(find_quotes(item.rationale, pairs), item.quotes):
            assert turns[q["turn"]][q["start"]:q["end"]] == item.rationale[s:e]


def test_the_same_adversarial_model_unguided_fabricates_quotes(tok):
    """The property above is not vacuous: without the guide these logits quote what is not there."""
    sessions = _sessions([["我很好，你呢？", "工作压力很大"], ["最近睡不好", "你愿意多说一些吗"]], "zh")
    marks = {"zh": load_instrument("wai-sr").prompt_texts("zh").quotes}
    rates = {}
    for grounded in (True, False):
        scored = _score(tok, sessions, 7, "open+close", grounded)
        pairs = [(it.rationale, "", [t.text for t in s.turns], "zh") for sess, s in zip(scored, sessions)
                 for it in sess.items.values()]
        rates[grounded] = rationale_quality(pairs, marks)
    assert rates[True]["n_quotes"] > 0 and rates[True]["grounding_rate"] == 1.0
    assert rates[False]["n_quotes"] > 0 and rates[False]["grounding_rate"] < 0.5


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=transcripts, bias=st.sampled_from(BIASES), seed=st.integers(0, 2**31 - 1))
def test_property_the_trie_walk_allows_exactly_the_tokens_that_keep_a_quote_grounded(tok, turns, bias, seed):
    """The allowed set (vocabulary trie x transcript automaton) equals checking every token one by one."""
    index = TranscriptIndex(turns, ZH_PAIRS, token_bytes(tok), "zh")
    g = QuoteGuide(index)
    rng = np.random.default_rng(seed)
    quoted = 0
    for row in _biased(tok, rng, bias, 12):
        brute = [t for t in range(len(tok)) if index.advance(g.state, t) is not None]
        assert index.allowed(g.state).tolist() == brute
        quoted += g.in_quote
        g.choose(row)
    event(f"steps inside a quote: {min(quoted, 3)}{'+' if quoted >= 3 else ''}")


def test_the_folds_rationale_quality_is_pooled_per_mode():
    from care.run.aggregate import _rationale_summary

    def run(n_quotes, grounded, seconds, bleu):
        return {"n_pairs": 24, "bleu": bleu, "rouge_l_f": 0.3, "n_quotes": n_quotes, "n_quotes_grounded": grounded,
                "grounding_rate": grounded / n_quotes if n_quotes else None, "seconds": seconds}

    folds = [{"n_pairs": 24, "grounded_quotes": True, "constrained": run(10, 10, 3.0, 20.0),
              "unconstrained": run(8, 1, 2.0, 10.0)},
             {"n_pairs": 24, "grounded_quotes": True, "constrained": run(0, 0, 3.0, 30.0),
              "unconstrained": run(2, 1, 2.0, 20.0)}]
    out = _rationale_summary(folds)
    assert out["n_pairs"] == 48 and out["time_ratio"] == pytest.approx(1.5)
    assert out["constrained"]["grounding_rate"] == 1.0 and out["constrained"]["bleu"] == pytest.approx(25.0)
    assert out["unconstrained"]["grounding_rate"] == pytest.approx(0.2) and out["unconstrained"]["seconds"] == 4.0
    for f in folds:  # grounded quotes not asked for and impossible with this tokenizer: said, not invented
        f.update(constrained=None, grounded_quotes=False, constrained_skipped="needs a byte-level BPE tokenizer")
    out = _rationale_summary(folds)
    assert out["constrained"] is None and out["time_ratio"] is None and "byte-level" in out["constrained_skipped"]
    assert _rationale_summary([]) is None
