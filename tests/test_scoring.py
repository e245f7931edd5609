"""Scoring: shared transcript cache == per-item prompts, greedy parsing, rationales, rationale metrics."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from care.data.instrument import load_instrument
from care.model.prompts import PromptBuilder, PromptConfig, item_block, render_transcript
from care.params import ModelParams
from care.data.schema import Session, Turn
from care.evaluation.rationale_quality import rationale_quality
from care.evaluation.readout import ItemScore, SessionScore, parse_score, readout
from care.evaluation.torch_scoring import score_sessions
from care.model.tiny import random_model, train_tokenizer

ZH_CHARS = "我你他她的了是在有不这个们来到时大地为上和也要就出会可以说生对年着能过工作压力睡觉焦虑沟通领导家人朋友感觉咨询师"
EN_WORDS = "i feel work stress sleep boss talk family friend worry today better goals plan why how what the a and".split()


def _sessions() -> list[Session]:
    rng = random.Random(3)
    out = []
    for n, (lang, turns) in enumerate([("zh", 6), ("en", 3), ("zh", 17), ("en", 9)]):
        tt = []
        for t in range(turns):
            if lang == "zh":
                text = "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(5, 30)))
            else:
                text = " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(3, 12)))
            tt.append(Turn(speaker="counselor" if t % 2 == 0 else "client", text=text))
        out.append(Session(session_id=f"s{n}", language=lang, turns=tt))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread, and much more steadily when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    instrument = load_instrument("wai-sr")
    sessions = _sessions()
    corpus = [render_transcript(s) for s in sessions]
    corpus += [item_block(instrument, i, lang) for i in instrument.item_ids for lang in ("zh", "en")]
    corpus += ["0123456789\n"] * 5
    tokenizer = train_tokenizer(corpus * 3, vocab_size=600)
    builder = PromptBuilder(tokenizer, instrument, PromptConfig.from_params(ModelParams(max_length=2048, target_tokens=64)))
    model = random_model(tokenizer, hidden_size=64, intermediate_size=128, layers=2, heads=4, seed=1)
    return instrument, sessions, tokenizer, builder, model


def _force(model, token_id: int):
    """A copy of the model whose LM head always prefers `token_id` by a wide margin."""
    forced = copy.deepcopy(model)
    old = forced.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = 1e4
    forced.lm_head = head
    return forced


def test_shared_cache_matches_per_item(setup):
    instrument, sessions, tokenizer, builder, model = setup
    lengths = {len(builder.encode(s).prefix) for s in sessions}
    assert len(lengths) == len(sessions)  # sessions of different lengths
    shared = score_sessions(model, tokenizer, builder, sessions, batch_size=5, progress=False)
    naive = score_sessions(model, tokenizer, builder, sessions, shared_cache=False, progress=False)
    assert [s.session_id for s in shared] == [s.session_id for s in sessions]
    for a, b in zip(shared, naive):
        assert list(a.items) == instrument.item_ids
        for item in instrument.item_ids:
            x, y = a.items[item], b.items[item]
            assert abs(x.expected - y.expected) < 1e-4
            assert max(abs(p - q) for p, q in zip(x.distribution, y.distribution)) < 1e-4
            assert abs(x.digit_mass - y.digit_mass) < 1e-4
            assert x.greedy == y.greedy and x.greedy_text_ok == y.greedy_text_ok
            assert abs(sum(x.distribution) - 1) < 1e-5
            assert 1 <= x.expected <= 5
            assert 0 < x.digit_mass < 1
            assert x.rationale is None
        for dim, ids in instrument.items_by_dimension.items():
            assert a.dimensions_expected[dim] == pytest.approx(sum(a.items[i].expected for i in ids) / len(ids))


def test_session_batches_match_one_session_at_a_time(setup):
    """Several sessions' transcripts in one left-padded prefix batch, item rows of different sessions in one
    batch (gathered cache rows), greedy fallback and rationale decoding over them: the same scores (1e-6)."""
    instrument, sessions, tokenizer, builder, model = setup
    kw = dict(rationales=True, max_new_tokens=6, progress=False)
    one = score_sessions(model, tokenizer, builder, sessions, batch_size=16, **kw)
    grouped = score_sessions(model, tokenizer, builder, sessions, batch_size=7, session_batch=3, **kw)
    assert [s.session_id for s in grouped] == [s.session_id for s in sessions]
    for a, b in zip(one, grouped):
        assert a.prefix_tokens == b.prefix_tokens
        for item in instrument.item_ids:
            x, y = a.items[item], b.items[item]
            assert abs(x.expected - y.expected) < 1e-6 and abs(x.digit_mass - y.digit_mass) < 1e-6
            assert max(abs(p - q) for p, q in zip(x.distribution, y.distribution)) < 1e-6
            assert (x.greedy, x.greedy_text_ok, x.rationale) == (y.greedy, y.greedy_text_ok, y.rationale)


def test_answer_logits_equal_full_forward(setup):
    """The body + gathered LM head reads exactly the logits of a plain forward over the whole prompt."""
    instrument, sessions, tokenizer, builder, model = setup
    enc = builder.encode(sessions[1])
    item = instrument.item_ids[4]
    with torch.no_grad():
        logits = model(torch.tensor([enc.prefix + enc.items[item]])).logits[0, -1]
    p = torch.softmax(logits[builder.digit_ids], -1)
    score = score_sessions(model, tokenizer, builder, [sessions[1]], progress=False)[0].items[item]
    assert score.distribution == pytest.approx(p.tolist(), abs=1e-5)
    assert score.digit_mass == pytest.approx(float(torch.softmax(logits, -1)[builder.digit_ids].sum()), abs=1e-6)


def test_peft_model_shared_matches_naive(setup):
    from peft import LoraConfig, get_peft_model

    instrument, sessions, tokenizer, builder, model = setup
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    base = score_sessions(model, tokenizer, builder, sessions[:2], progress=False)
    shared = score_sessions(peft_model, tokenizer, builder, sessions[:2], progress=False)
    naive = score_sessions(peft_model, tokenizer, builder, sessions[:2], shared_cache=False, progress=False)
    assert peft_model.training  # mode restored
    moved = 0.0
    for a, b, c in zip(shared, naive, base):
        for item in instrument.item_ids:
            assert abs(a.items[item].expected - b.items[item].expected) < 1e-4
            moved = max(moved, abs(a.items[item].expected - c.items[item].expected))
    assert moved > 1e-4  # the adapter is really applied


def test_forced_non_digit_is_unparsed(setup):
    instrument, sessions, tokenizer, builder, model = setup
    x = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    forced = _force(model, x)
    for shared in (True, False):
        scores = score_sessions(forced, tokenizer, builder, sessions[:2], shared_cache=shared, progress=False)
        for s in scores:
            for item in s.items.values():
                assert item.greedy is None and not item.greedy_text_ok
                assert 1 <= item.expected <= 5  # the distribution is still read
                assert item.digit_mass < 1e-6
            assert all(v is None for v in s.dimensions_greedy.values())
        items, dims, n_unparsed = readout(scores, instrument, "greedy")
        assert n_unparsed == 2 * len(instrument.item_ids)
        assert all(v is None for d in items.values() for v in d.values())
        assert all(v is None for d in dims.values() for v in d.values())
        items, dims, n_unparsed = readout(scores, instrument, "expected")
        assert n_unparsed == 0 and all(v is not None for d in items.values() for v in d.values())


def test_forced_digit_reads_that_score(setup):
    instrument, sessions, tokenizer, builder, model = setup
    forced = _force(model, builder.digit_ids[2])  # the digit "3"
    scores = score_sessions(forced, tokenizer, builder, sessions[:2], progress=False)
    for s in scores:
        for item in s.items.values():
            assert item.greedy == 3 and item.greedy_text_ok
            assert item.expected == pytest.approx(3.0) and item.digit_mass == pytest.approx(1.0)
        assert s.dimensions_greedy == {d: 3.0 for d in instrument.dimensions}
    items, dims, n_unparsed = readout(scores, instrument, "greedy")
    assert n_unparsed == 0 and dims["s0"]["bond"] == 3.0


def test_parse_score():
    points = [1, 2, 3, 4, 5]
    assert parse_score("4\nbecause", points) == 4
    assert parse_score("  2 ", points) == 2
    assert parse_score("7", points) is None
    assert parse_score("12", points) is None
    assert parse_score("Score: 3", points) is None
    assert parse_score("", points) is None


def test_rationales_deterministic_and_match_generate(setup):
    instrument, sessions, tokenizer, builder, model = setup
    some = sessions[:2]
    kw = dict(rationales=True, max_new_tokens=12, progress=False, grounded_quotes=False)  # free text, as generate
    a = score_sessions(model, tokenizer, builder, some, batch_size=4, **kw)
    b = score_sessions(model, tokenizer, builder, some, batch_size=12, **kw)
    c = score_sessions(model, tokenizer, builder, some, shared_cache=False, **kw)
    for x, y, z in zip(a, b, c):
        for item in instrument.item_ids:
            assert isinstance(x.items[item].rationale, str)
            assert x.items[item].rationale == y.items[item].rationale == z.items[item].rationale
            assert x.items[item].greedy == z.items[item].greedy
    # the decoding loop over the shared cache produces what transformers' generate produces
    enc = builder.encode(some[0])
    for item in instrument.item_ids[:3]:
        prompt = torch.tensor([enc.prefix + enc.items[item]])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
        text = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
        expected = text.split("\n", 1)[1].strip() if "\n" in text else ""
        assert a[0].items[item].rationale == expected


def test_rationale_for_forced_model(setup):
    """A model forced to a digit then EOS-free text: rationale is what follows the first newline."""
    instrument, sessions, tokenizer, builder, model = setup
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    forced = _force(model, nl)
    s = score_sessions(forced, tokenizer, builder, sessions[:1], rationales=True, max_new_tokens=5, progress=False)[0]
    for item in s.items.values():
        assert item.greedy is None and item.rationale == ""  # "\n\n\n\n\n": nothing after the first newline


def test_session_score_json_roundtrip(setup):
    import json

    instrument, sessions, tokenizer, builder, model = setup
    s = score_sessions(model, tokenizer, builder, sessions[:1], progress=False)[0]
    back = SessionScore.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and isinstance(back.items["1"], ItemScore)


def test_rationale_quality_known_strings():
    utts_zh = ["我最近工作压力很大", "咨询师：你愿意多说一些吗"]
    ref_zh = "来访者说“我最近工作压力很大”，咨询师给予了回应，来访者感到被理解。"
    utts_en = ["I have been so stressed at work lately", "Would you like to say more?"]
    ref_en = 'The client said "stressed at work" and the counselor invited them to say more about it.'
    marks = {lang: load_instrument("wai-sr").prompt_texts(lang).quotes for lang in ("zh", "en")}
    same = rationale_quality([(ref_zh, ref_zh, utts_zh, "zh"), (ref_en, ref_en, utts_en, "en")], marks)
    assert same["n_pairs"] == 2 and same["n_quotes"] == 2
    assert same["bleu"] == pytest.approx(100.0)
    assert same["rouge_l_f"] == pytest.approx(1.0)
    assert same["grounding_rate"] == 1.0
    assert same["by_language"]["zh"]["bleu"] == pytest.approx(100.0)
    assert not any(isinstance(v, str) for v in same.values())

    made_up = rationale_quality([("来访者说“我从来没有说过这句话”，所以评分低。", ref_zh, utts_zh, "zh")], marks)
    assert made_up["n_quotes"] == 1 and made_up["grounding_rate"] == 0.0
    assert 0 < made_up["rouge_l_f"] < 1 and made_up["bleu"] < 100

    partial = rationale_quality([('He said "stressed at work" but also "I love my boss".', ref_en, utts_en, "en")], marks)
    assert partial["grounding_rate"] == 0.5

    none = rationale_quality([("no quotes here at all", ref_en, utts_en, "en")], marks)
    assert none["n_quotes"] == 0 and none["grounding_rate"] is None
    assert rationale_quality([], marks)["bleu"] is None


def test_max_new_tokens_zero_reads_the_answer_position_only(setup):
    """With max_new_tokens=0 (the zero-shot baseline reads only the expected score) a non-digit answer is
    not decoded further: greedy stays unparsed, the expected score is the same as with the fallback."""
    instrument, sessions, tokenizer, builder, model = setup
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    forced = _force(model, nl)
    calls = []
    forced.lm_head.register_forward_hook(lambda *_: calls.append(1))
    none = score_sessions(forced, tokenizer, builder, sessions[:1], max_new_tokens=0, progress=False)[0]
    n_none = len(calls)
    fallback = score_sessions(forced, tokenizer, builder, sessions[:1], progress=False)[0]
    assert len(calls) - n_none > n_none  # the fallback decodes further; max_new_tokens=0 does not
    for item in instrument.item_ids:
        assert none.items[item].greedy is None
        assert none.items[item].expected == fallback.items[item].expected
