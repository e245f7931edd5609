"""The synthetic corpus generator: determinism, schema, client grouping, rating statistics, grounding."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import numpy as np
import pytest
from scipy.stats import pearsonr

from care.errors import UsageError
from care.data.instrument import load_instrument
from care.data.reader import read_jsonl
from care.data.synth import generate, write_corpus

INST = load_instrument("wai-sr")
QUOTED = {"zh": re.compile(r"“([^”]*)”"), "en": re.compile(r'"([^"]*)"')}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_small")
    card = write_corpus(out, n_sessions=120, n_clients=24, language="zh", seed=3)
    return out, card


@pytest.fixture(scope="module")
def default_corpus():
    return generate(400, 80, "zh", 0, 24)


def _dim_scores(ratings: dict) -> dict:
    return INST.dimension_scores(ratings)


def test_same_arguments_same_bytes_and_seed_changes_them(tmp_path, small):
    out, _ = small
    again = tmp_path / "again"
    write_corpus(again, n_sessions=120, n_clients=24, language="zh", seed=3)
    assert (again / "sessions.jsonl").read_bytes() == (out / "sessions.jsonl").read_bytes()
    assert (again / "card.json").read_bytes() == (out / "card.json").read_bytes()
    other = tmp_path / "other"
    write_corpus(other, n_sessions=120, n_clients=24, language="zh", seed=4)
    assert (other / "sessions.jsonl").read_bytes() != (out / "sessions.jsonl").read_bytes()


def test_every_line_parses_and_follows_the_contract(small):
    out, card = small
    parsed = read_jsonl(out / "sessions.jsonl")
    assert parsed.problems == []
    sessions = parsed.sessions
    assert len(sessions) == 120 == card["n_sessions"]
    assert [s.session_id for s in sessions] == [f"s{i:05d}" for i in range(1, 121)]
    assert len({s.client_id for s in sessions}) == 24 == card["n_clients"]
    items = INST.item_ids
    for s in sessions:
        assert s.language == "zh"
        assert re.fullmatch(r"c\d{4}", s.client_id) and re.fullmatch(r"t\d{2}", s.counselor_id)
        assert sorted(s.client_ratings) == sorted(items)
        assert all(1 <= v <= 5 for v in s.client_ratings.values())
        assert sorted(s.rationales) == sorted(items)
        assert all(r.strip() for r in s.rationales.values())
        if s.counselor_ratings is not None:
            assert sorted(s.counselor_ratings) == sorted(items)
            assert all(1 <= v <= 5 for v in s.counselor_ratings.values())
        assert {t.speaker for t in s.turns} == {"counselor", "client"}
        assert len(s.turns) >= 10
        assert all(t.text.strip() for t in s.turns)
    # each line is exactly Session.to_json()
    lines = (out / "sessions.jsonl").read_text("utf-8").splitlines()
    assert lines == [s.to_json() for s in sessions]


def test_clients_keep_one_counselor_and_default_client_count(default_corpus):
    sessions, card = default_corpus
    assert card["n_clients"] == 80
    by_client = defaultdict(set)
    for s in sessions:
        by_client[s.client_id].add(s.counselor_id)
    assert len(by_client) == 80
    assert all(len(t) == 1 for t in by_client.values())
    _, card_default = generate(50)
    assert card_default["n_clients"] == 10  # max(1, n_sessions // 5)


def test_client_random_effect_is_shared_across_a_clients_sessions(default_corpus):
    sessions, _ = default_corpus
    by_client = defaultdict(list)
    for s in sessions:
        by_client[s.client_id].append(np.mean(list(s.client_ratings.values())))
    multi = {c: v for c, v in by_client.items() if len(v) >= 2}
    first = np.array([v[0] for v in multi.values()])
    rest = np.array([np.mean(v[1:]) for v in multi.values()])
    assert pearsonr(first, rest).statistic > 0.2


def test_rating_statistics_match_the_targets(default_corpus):
    sessions, card = default_corpus
    scores = {d: np.array([_dim_scores(s.client_ratings)[d] for s in sessions]) for d in INST.dimensions}
    for d in INST.dimensions:
        assert 3.6 <= scores[d].mean() <= 4.1, d
        assert 0.6 <= scores[d].std(ddof=1) <= 1.0, d
        assert card["statistics"]["client_dimension_mean"][d] == pytest.approx(scores[d].mean(), abs=1e-4)
    rated = [s for s in sessions if s.counselor_ratings is not None]
    assert 0.86 <= len(rated) / len(sessions) <= 0.97
    assert card["n_with_counselor_ratings"] == len(rated)
    for d in INST.dimensions:
        client = [_dim_scores(s.client_ratings)[d] for s in rated]
        counselor = [_dim_scores(s.counselor_ratings)[d] for s in rated]
        r = pearsonr(counselor, client).statistic
        assert 0.15 <= r <= 0.4, (d, r)
        assert card["statistics"]["counselor_vs_client_r"][d] == pytest.approx(r, abs=1e-4)
        assert np.mean(counselor) > np.mean(client)  # lenient


def test_card_has_oracle_ceiling_and_no_text(default_corpus):
    sessions, card = default_corpus
    stats = card["statistics"]
    for d in INST.dimensions:
        assert stats["oracle_ceiling_r"][d] > 0.6
        assert stats["text_cue_r"][d] > 0.4
    assert card["generator"] == "care.data.synth" and card["version"]
    assert card["arguments"] == {"n_sessions": 400, "n_clients": 80, "language": "zh", "seed": 0,
                                 "mean_utterances": 24}
    assert "latent_mean" in card["generative_model"]["params"]
    blob = json.dumps(card, ensure_ascii=False)
    for s in sessions[:50]:
        for t in s.turns:
            assert t.text not in blob
    # default length: about 24 utterances of roughly 15-30 characters
    assert 20 <= card["text"]["mean_utterances"] <= 28
    assert 14 <= card["text"]["mean_utterance_characters"] <= 30
    assert 60 <= card["text"]["mean_rationale_characters"] <= 150


def test_rationale_quotes_occur_verbatim_in_the_transcript(default_corpus):
    sessions, _ = default_corpus
    n_quotes = 0
    for s in sessions:
        utterances = [t.text for t in s.turns]
        for text in s.rationales.values():
            spans = QUOTED["zh"].findall(text)
            assert spans, "every rationale cites the transcript"
            for span in spans:
                n_quotes += 1
                assert any(span in u for u in utterances)
            assert len(text) <= 200
    assert n_quotes >= 400 * 12


def test_cues_track_the_latent(default_corpus):
    sessions, card = default_corpus
    # A crude reader: counting "嗯嗯" turns of the counselor predicts lower bond.
    mm = np.array([sum(t.speaker == "counselor" and t.text.startswith("嗯嗯") for t in s.turns) for s in sessions])
    bond = np.array([_dim_scores(s.client_ratings)["bond"] for s in sessions])
    assert bond[mm >= 2].mean() < bond[mm == 0].mean() - 0.3


def test_english_corpus(tmp_path):
    card = write_corpus(tmp_path, n_sessions=60, n_clients=12, language="en", seed=1)
    parsed = read_jsonl(tmp_path / "sessions.jsonl")
    assert parsed.problems == [] and len(parsed.sessions) == 60
    assert card["language"] == "en"
    words = [len(t.text.split()) for s in parsed.sessions for t in s.turns]
    assert 6 <= np.mean(words) <= 20
    for s in parsed.sessions:
        assert s.language == "en"
        assert all(re.search(r"[A-Za-z]", t.text) for t in s.turns)
        assert not any(re.search(r"[\u4e00-\u9fff]", t.text) for t in s.turns)
        utterances = [t.text for t in s.turns]
        for text in s.rationales.values():
            spans = QUOTED["en"].findall(text)
            assert spans
            assert all(any(span in u for u in utterances) for span in spans)
            assert 20 <= len(text.split()) <= 90


def test_length_is_configurable():
    sessions, card = generate(40, 8, "zh", 0, mean_utterances=78)
    assert 66 <= card["text"]["mean_utterances"] <= 90
    assert np.mean([len(s.turns) for s in sessions]) == pytest.approx(card["text"]["mean_utterances"])


def test_same_latents_in_both_languages():
    zh, _ = generate(30, 6, "zh", 5)
    en, _ = generate(30, 6, "en", 5)
    assert [s.client_ratings for s in zh] == [s.client_ratings for s in en]
    assert [s.client_id for s in zh] == [s.client_id for s in en]


@pytest.mark.parametrize("kwargs", [dict(n_sessions=10, n_clients=11), dict(n_sessions=10, language="fr"),
                                    dict(n_sessions=0), dict(n_sessions=10, seed=-1)])
def test_bad_arguments_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        generate(**kwargs)


def test_cli_synth(tmp_path):
    from typer.testing import CliRunner

    from care_cli.main import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "c"), "--sessions", "25", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "25 sessions from 5 clients" in result.output
    card = json.loads((tmp_path / "c" / "card.json").read_text("utf-8"))
    assert card["arguments"]["seed"] == 2
    assert len((tmp_path / "c" / "sessions.jsonl").read_text("utf-8").splitlines()) == 25


def test_phrase_banks_are_consistent():
    from care.data.synth import phrases_en, phrases_zh

    for bank in (phrases_zh, phrases_en):
        for question, answer in bank.PAIRED.items():
            assert len(bank.BANK[question]) == len(bank.BANK[answer])
        for texts in bank.BANK.values():
            for text in texts:  # rationales quote with these marks: utterances must never contain them
                assert not any(q in text for q in ('"', "\u201c", "\u201d"))
        for dim in ("goal", "task", "bond"):  # distinct phrase families per dimension
            for tag in ("pos", "neg"):
                assert len(bank.BANK[f"c_{dim}_{tag}"]) >= 8 and len(bank.BANK[f"cl_{dim}_{tag}"]) >= 8
