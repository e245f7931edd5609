"""Folds: client-grouped, score-stratified, deterministic for a seed."""

from __future__ import annotations

import random

import pytest

from care.errors import CareError
from care.data.folds import fold_of, folds_document, make_folds, split
from care.data.instrument import load_instrument
from care.data.schema import Session

INSTRUMENT = load_instrument("wai-sr")


def sessions(n_clients: int = 40, seed: int = 0, max_per_client: int = 4) -> list[Session]:
    rng = random.Random(seed)
    out = []
    for c in range(n_clients):
        level = rng.choice([1, 2, 3, 4, 5])
        for k in range(rng.randint(1, max_per_client)):
            ratings = {i: min(5, max(1, level + rng.choice([-1, 0, 0, 1]))) for i in INSTRUMENT.item_ids}
            out.append(
                Session(session_id=f"s{c:03d}_{k}", client_id=f"c{c:03d}", language="en", client_ratings=ratings)
            )
    return out


def test_folds_cover_every_session_once_and_never_split_a_client():
    data = sessions()
    folds = make_folds(data, INSTRUMENT, 5, seed=123)
    assert len(folds) == 5
    flat = [sid for f in folds for sid in f]
    assert sorted(flat) == sorted(s.session_id for s in data)
    assert len(flat) == len(set(flat))
    assert all(f == sorted(f) for f in folds)
    where = fold_of(folds)
    client_folds: dict[str, set[int]] = {}
    for s in data:
        client_folds.setdefault(s.client_id, set()).add(where[s.session_id])
    assert all(len(v) == 1 for v in client_folds.values())


def test_folds_deterministic_for_seed_and_input_order():
    data = sessions()
    a = make_folds(data, INSTRUMENT, 5, seed=7)
    shuffled = list(data)
    random.Random(1).shuffle(shuffled)
    assert make_folds(shuffled, INSTRUMENT, 5, seed=7) == a
    assert make_folds(data, INSTRUMENT, 5, seed=8) != a


def test_folds_roughly_balanced_in_size_and_scores():
    data = sessions(n_clients=100, max_per_client=3)
    folds = make_folds(data, INSTRUMENT, 5, seed=123)
    sizes = [len(f) for f in folds]
    mean_size = len(data) / 5
    assert min(sizes) >= 0.7 * mean_size and max(sizes) <= 1.3 * mean_size, sizes
    by_id = {s.session_id: s for s in data}

    def overall(sid):
        d = INSTRUMENT.dimension_scores(by_id[sid].client_ratings)
        return sum(d.values()) / len(d)

    total = sum(overall(s.session_id) for s in data) / len(data)
    for f in folds:
        assert abs(sum(overall(sid) for sid in f) / len(f) - total) < 0.5


def test_fewer_clients_than_folds_is_a_clear_error():
    data = sessions(n_clients=3)
    with pytest.raises(CareError, match="only 3 client"):
        make_folds(data, INSTRUMENT, 5, seed=1)


def test_sessions_without_client_id_are_their_own_group():
    data = [
        Session(session_id=f"x{i}", language="en", client_ratings={k: 1 + i % 5 for k in INSTRUMENT.item_ids})
        for i in range(10)
    ]
    folds = make_folds(data, INSTRUMENT, 2, seed=0)
    assert sorted(sid for f in folds for sid in f) == sorted(s.session_id for s in data)


def test_split_and_document():
    data = sessions(n_clients=12)
    folds = make_folds(data, INSTRUMENT, 3, seed=5)
    train, test = split(folds, 1)
    assert test == folds[1] and set(train).isdisjoint(test)
    assert len(train) + len(test) == len(data)
    doc = folds_document(folds, data, seed=5)
    assert doc["n_folds"] == 3 and doc["seed"] == 5
    assert [f["fold"] for f in doc["folds"]] == [0, 1, 2]
    assert sum(f["clients"] for f in doc["folds"]) == 12
    assert [f["sessions"] for f in doc["folds"]] == folds
