"""Any scale and shape an instrument can express: 0-based scales, 0-10 with one-character answers (refused
clearly without them), items in no dimension, a single overall dimension; prompts, targets, the readout,
metrics, folds and the gate follow the instrument. (The whole pipeline on a 0-5, 20-item, 4-dimension
instrument: tests/test_bring_your_own.py.)"""

from __future__ import annotations

import copy
import random

import pytest
import yaml

from care.data.instrument import load_instrument
from care.data.schema import Session, Turn
from care.errors import CareError


def _doc(points=range(0, 6), answers=None, dims=("overall",), loose=0, n_items=4) -> dict:
    items = [{"id": f"i{k}", "dimension": dims[k % len(dims)] if dims else None, "text": {"en": f"Statement {k}."}}
             for k in range(n_items - loose)]
    items += [{"id": f"x{k}", "text": {"en": f"Loose statement {k}."}} for k in range(loose)]
    scale = {"min": min(points), "max": max(points), "labels": {p: {"en": f"level {p}"} for p in points}}
    if answers is not None:
        scale["answers"] = answers
    return {"name": "test-scale", "languages": ["en"], "scale": scale, "dimensions": list(dims), "items": items}


def _load(tmp_path, doc):
    path = tmp_path / "inst.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    return load_instrument(path)


ELEVEN = {p: "ABCDEFGHIJK"[p] for p in range(11)}


def test_scales_from_zero_and_their_limits_are_said_at_load(tmp_path):
    inst = _load(tmp_path, _doc(range(0, 6)))
    assert inst.scale.points == [0, 1, 2, 3, 4, 5] and inst.scale.answer_symbols == list("012345")
    assert _load(tmp_path, _doc(range(0, 10))).scale.points[-1] == 9  # ten single digits
    with pytest.raises(CareError, match=r"field=scale: .*scale point 10 has two digits.*give scale.answers.*10: K"):
        _load(tmp_path, _doc(range(0, 11)))
    inst = _load(tmp_path, _doc(range(0, 11), ELEVEN))
    assert inst.scale.answer(10) == "K" and inst.scale.answer_symbols[0] == "A"
    for answers, message in [({**ELEVEN, 3: "DD"}, "one ASCII letter or digit"), ({**ELEVEN, 3: "a"}, "distinct"),
                             ({**ELEVEN, 3: "ア"}, "one ASCII letter or digit"),
                             ({p: a for p, a in ELEVEN.items() if p != 5}, "answers must cover exactly 0..10")]:
        with pytest.raises(CareError, match=message):
            _load(tmp_path, _doc(range(0, 11), answers))
    with pytest.raises(CareError, match="2 to 11 points"):
        _load(tmp_path, _doc(range(0, 12), {p: "ABCDEFGHIJKL"[p] for p in range(12)}))
    doc = _doc(range(0, 3))
    doc["scale"]["min"] = -1
    with pytest.raises(CareError, match="must not be negative"):
        _load(tmp_path, doc)


def test_items_in_no_dimension_and_a_single_overall_dimension(tmp_path):
    from care.evaluation.metrics import evaluate

    inst = _load(tmp_path, _doc(range(0, 6), dims=("overall",), loose=2, n_items=6))
    assert inst.items_by_dimension == {"overall": ["i0", "i1", "i2", "i3"]}
    ratings = {"i0": 1, "i1": 2, "i2": 3, "i3": 4, "x0": 0, "x1": 5}
    assert inst.dimension_scores(ratings) == {"overall": 2.5}
    true = {f"s{k}": {i: (v + k) % 6 for i, v in ratings.items()} for k in range(6)}
    pred = {sid: {i: v + 0.5 for i, v in r.items()} for sid, r in true.items()}
    res = evaluate(pred, true, inst)
    assert set(res["dimensions"]) == {"overall"} and set(res["items"]) == set(ratings)
    assert res["items"]["x1"]["pearson"] == pytest.approx(1.0) and res["items"]["x1"]["mse"] == pytest.approx(0.25)
    for doc, message in [(_doc(dims=()), "field=dimensions"), (_doc(dims=("a/b",)), "dimension name 'a/b'"),
                         (_doc(dims=("*",)), "dimension name"), (_doc(dims=("a", "a")), "duplicate dimension")]:
        with pytest.raises(CareError, match=message):
            _load(tmp_path, doc)


def test_folds_and_gate_follow_a_single_dimension(tmp_path):
    from care.data.folds import make_folds
    from care.evaluation.gate import evaluate_gate
    from care.params import GateParams

    inst = _load(tmp_path, _doc(range(0, 6), dims=("overall",), loose=1))
    rng = random.Random(0)
    sessions = [Session(session_id=f"s{k}", client_id=f"c{k // 2}", language="en",
                        turns=[Turn(speaker="counselor", text="a"), Turn(speaker="client", text="b")],
                        client_ratings={i: rng.randint(0, 5) for i in inst.item_ids}) for k in range(12)]
    folds = make_folds(sessions, inst, 2, seed=1)
    assert sorted(sid for f in folds for sid in f) == sorted(s.session_id for s in sessions)
    cv = {"mean": {"overall": {"pearson": 0.4, "mse": 0.9}}, "baselines": {}, "baselines_n": {}}
    gate = evaluate_gate(cv, GateParams(min_pearson={"*": 0.3, "overall": 0.5}, max_mse={"*": 1.0},
                                     beat_on_pearson=[], beat_on_mse=[]))
    assert gate["passed"] is False and gate["failed"] == ["overall.pearson >= 0.5"]


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """A 0-10 instrument answered A-K, a small tokenizer and a random model for it."""
    from care.model.prompts import PromptBuilder, PromptConfig, item_block
    from care.params import ModelParams
    from care.model.tiny import random_model, train_tokenizer

    inst = _load(tmp_path_factory.mktemp("inst"), _doc(range(0, 11), ELEVEN, dims=("goal", "bond"), loose=1))
    texts = [item_block(inst, i, "en") for i in inst.item_ids] + ["Counselor: how are you\nClient: fine thanks"] * 5
    tok = train_tokenizer(texts * 3, 400)
    builder = PromptBuilder(tok, inst, PromptConfig.from_params(ModelParams(max_length=512, target_tokens=16)))
    model = random_model(tok, hidden_size=32, intermediate_size=64, layers=1, heads=2, max_position=512, seed=2)
    return inst, tok, builder, model


def test_a_0_to_10_scale_is_read_from_one_answer_token_per_point(letters):
    import torch

    from care.evaluation.readout import parse_score
    from care.evaluation.torch_scoring import score_sessions
    from care.model.prompts import item_block

    inst, tok, builder, model = letters
    assert "Options: A = level 0, B = level 1" in item_block(inst, "i0", "en")
    assert len(set(builder.digit_ids)) == 11
    ids, _ = builder.target(10, "because")
    assert ids[0] == builder.digit_ids[10] == tok("K", add_special_tokens=False)["input_ids"][0]
    points, answers = inst.scale.points, inst.scale.answer_symbols
    assert parse_score("K\nbecause", points, answers) == 10 and parse_score(" a", points, answers) is None
    assert parse_score("Kind", points, answers) is None and parse_score("3", points, answers) is None
    forced = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[builder.digit_ids[10]] = 1e4  # the model always answers K
    forced.lm_head = head
    session = Session(session_id="s", language="en", turns=[Turn(speaker="counselor", text="how are you"),
                                                             Turn(speaker="client", text="fine thanks")])
    score = score_sessions(forced, tok, builder, [session], progress=False)[0]
    assert set(score.items) == set(inst.item_ids) and set(score.dimensions_expected) == {"goal", "bond"}
    for item in score.items.values():
        assert len(item.distribution) == 11 and item.greedy == 10 and item.greedy_text_ok
        assert item.expected == pytest.approx(10.0)


def test_tokenizer_that_cannot_read_a_scale_is_refused_by_name(letters):
    from care.model.prompts import PromptBuilder, PromptConfig
    from care.params import ModelParams

    inst, tok, _, _ = letters
    two_digit = inst.model_copy(update={"scale": inst.scale.model_copy(update={"answers": {**ELEVEN, 10: "Ka"}})})
    with pytest.raises(CareError, match=r"does not encode the answer 'Ka' of scale point 10 as one token"):
        PromptBuilder(tok, two_digit, PromptConfig.from_params(ModelParams(max_length=512, target_tokens=16)))
