"""The TF-IDF + ridge peer: deterministic, held-out only, and better than a constant on synthetic data."""

from __future__ import annotations

import pytest

from care.evaluation.baselines import client_items, train_mean_predictions
from care.data.instrument import load_instrument
from care.evaluation.metrics import evaluate
from care.data.synth import generate
from care.evaluation.text_baseline import session_views, tfidf_predictions

INSTRUMENT = load_instrument("wai-sr")


@pytest.fixture(scope="module")
def corpus():
    sessions, _ = generate(n_sessions=100, language="en", seed=3, mean_utterances=14)
    # whole clients on each side (5 sessions per client, ids in client order)
    by_client = sorted({s.client_id for s in sessions})
    test_clients = set(by_client[::4])
    train = [s for s in sessions if s.client_id not in test_clients]
    test = [s for s in sessions if s.client_id in test_clients]
    return train, test


def test_deterministic_and_order_free(corpus):
    train, test = corpus
    a = tfidf_predictions(train, test, INSTRUMENT)
    b = tfidf_predictions(list(reversed(train)), test, INSTRUMENT)
    assert a == b
    assert set(a) == {s.session_id for s in test}
    assert all(set(p) == set(INSTRUMENT.item_ids) for p in a.values())
    assert all(1.0 <= v <= 5.0 for p in a.values() for v in p.values())


def test_beats_constant_prediction(corpus):
    train, test = corpus
    true = client_items(test)
    model = evaluate(tfidf_predictions(train, test, INSTRUMENT), true, INSTRUMENT)
    const = evaluate(train_mean_predictions(train, test, INSTRUMENT), true, INSTRUMENT)
    for dim in INSTRUMENT.dimensions:
        assert model["dimensions"][dim]["mse"] < const["dimensions"][dim]["mse"], dim
        assert model["dimensions"][dim]["pearson"] > 0.2, dim


def test_views_split_by_speaker(corpus):
    s = corpus[0][0]
    views = session_views(s)
    assert views["client"] == "\n".join(t.text for t in s.turns if t.speaker == "client")
    assert views["counselor"] == "\n".join(t.text for t in s.turns if t.speaker == "counselor")
    assert views["transcript"].count("\n") == len(s.turns) - 1


def test_labels_of_the_held_out_sessions_are_never_used(corpus):
    train, test = corpus
    relabelled = [s.model_copy(update={"client_ratings": {i: 1 for i in INSTRUMENT.item_ids}}) for s in test]
    assert tfidf_predictions(train, test, INSTRUMENT) == tfidf_predictions(train, relabelled, INSTRUMENT)
