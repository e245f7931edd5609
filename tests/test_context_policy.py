"""The long-transcript context policy (`model.context_policy`): keep_end drops whole turns from the start,
keep_start_end keeps the opening and the end around a gap mark; both fit the budget, leave short transcripts
alone, and the policy is part of the fit's cache key (so of the score cache's) and of the package's scoring
config (tests/test_bring_your_own.py runs it through training, ONNX parity and `care score`)."""

from __future__ import annotations

import pytest

from care.data.instrument import load_instrument
from care.data.schema import Session, Turn
from care.model.prompts import GAP_MARK, PromptBuilder, PromptConfig, item_block, render_transcript
from care.params import ModelParams


def _session(n_turns: int, context: str | None = None) -> Session:
    turns = [Turn(speaker=("counselor", "client")[t % 2], text=f"turn {t} " + "words " * 6) for t in range(n_turns)]
    return Session(session_id="long", language="en", context=context, turns=turns)


@pytest.fixture(scope="module")
def tokenizer():
    from care.model.tiny import train_tokenizer

    inst = load_instrument("wai-sr")
    texts = [render_transcript(_session(30, "my own words"))] + [item_block(inst, i, "en") for i in inst.item_ids]
    return train_tokenizer(texts * 3, 500)


def _builder(tokenizer, policy: str, max_length: int = 400) -> PromptBuilder:
    config = PromptConfig.from_params(ModelParams(max_length=max_length, target_tokens=16, context_policy=policy))
    return PromptBuilder(tokenizer, load_instrument("wai-sr"), config)


def _text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_keep_end_and_keep_start_end_cut_whole_turns_within_the_budget(tokenizer):
    session = _session(60, context="my own words")
    end, both = _builder(tokenizer, "keep_end"), _builder(tokenizer, "keep_start_end")
    budget = end.config.max_length - max(len(s) for s in end.suffixes("en").values()) - end.config.target_tokens
    a, b = end.encode(session), both.encode(session)
    assert a.truncated and b.truncated and len(a.prefix) <= budget and len(b.prefix) <= budget
    ta, tb = _text(tokenizer, a.prefix), _text(tokenizer, b.prefix)
    assert "turn 59 " in ta and "turn 0 " not in ta and "my own words" not in ta and GAP_MARK not in ta
    assert "turn 59 " in tb and "turn 0 " in tb and "my own words" in tb and tb.count(GAP_MARK) == 1
    head, tail = tb.split(GAP_MARK)
    kept_head = [t for t in range(60) if f"turn {t} " in head]
    kept_tail = [t for t in range(60) if f"turn {t} " in tail]
    assert kept_head == list(range(len(kept_head))) and kept_tail == list(range(60 - len(kept_tail), 60))
    assert len(kept_head) >= 2 and len(kept_tail) >= 2 and kept_head[-1] + 1 < kept_tail[0]
    short = _session(4)
    assert end.encode(short) == both.encode(short) and not both.encode(short).truncated


def test_keep_start_end_falls_back_to_the_end_when_the_last_turn_alone_is_too_long(tokenizer):
    session = Session(session_id="s", language="en", turns=[Turn(speaker="counselor", text="hello"),
                                                             Turn(speaker="client", text="words " * 400)])
    a, b = _builder(tokenizer, "keep_end").encode(session), _builder(tokenizer, "keep_start_end").encode(session)
    assert a == b and a.truncated


def test_an_unknown_policy_is_refused_and_the_policy_keys_the_fit():
    from care.params import load_params
    from care.run.artifacts import ModelDir
    from care.run.data import DataRef
    from care.errors import UsageError
    from care.run.fits import fit_key

    with pytest.raises(UsageError, match="model.context_policy"):
        load_params(None, ["model.context_policy=middle"])
    ref = DataRef(path="d.jsonl", sha256="0" * 64, limit=None, instrument="wai-sr", instrument_sha256="1" * 64,
                  prompts_sha256="2" * 64, n_sessions=2, n_clients=1, n_with_counselor_ratings=0,
                  n_with_rationales=0, languages=["en"], n_bytes=0)
    base = ModelDir("base", key="base")
    keys = {policy: fit_key(ref, load_params(None, [f"model.context_policy={policy}"]).fit, ["a"], base)
            for policy in ("keep_end", "keep_start_end")}
    assert keys["keep_end"] != keys["keep_start_end"]
