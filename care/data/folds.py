"""Cross-validation folds: every session of a client in one fold, folds stratified on the alliance scores.

Each session gets a stratum: the quantile bin (by rank) of its client's mean overall score (the mean of
the client's sessions' dimension scores). scikit-learn's StratifiedGroupKFold then assigns whole clients
to folds so that each fold's strata mix resembles the whole. Sessions are sorted by id first, so the folds
depend only on the data and the seed, never on the order of the input file. A session without a client id
is its own group; client ids are compared normalised (case, surrounding spaces, invisible characters).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

from care.errors import CareError, UsageError
from care.data.ids import normalise_id, readable_id
from care.data.instrument import Instrument
from care.data.schema import Session

MAX_BINS = 5


def _groups(sessions: list[Session]) -> list[str]:
    """The client each session belongs to, compared normalised (care.data.ids): `C01`, `c01 `, `c01\u200b` and a
    Cyrillic `с01` are one client, so never split across training and held-out folds. A group is named by the
    readable spelling of its first session's client id: data without look-alike spellings keeps its folds."""
    names: dict[str, str] = {}
    out = []
    for s in sessions:
        if s.client_id is None:
            out.append(f"session:{s.session_id}")
        else:
            out.append("client:" + names.setdefault(normalise_id(s.client_id), readable_id(s.client_id)))
    return out


def _strata(sessions: list[Session], instrument: Instrument, n_folds: int) -> np.ndarray:
    """Quantile bin (by rank) of the client's mean overall score, per session."""
    per_group: dict[str, list[float]] = {}
    groups = _groups(sessions)
    for s, group in zip(sessions, groups):
        if not s.client_ratings:
            raise CareError(f"session={s.session_id} field=client_ratings: needed to make folds")
        missing = [i for i in instrument.item_ids if i not in s.client_ratings]
        if missing:
            raise CareError(f"session={s.session_id} field=client_ratings: items {', '.join(missing)} not rated")
        dims = instrument.dimension_scores(s.client_ratings)
        per_group.setdefault(group, []).append(sum(dims.values()) / len(dims))
    group_mean = {g: float(np.mean(v)) for g, v in per_group.items()}
    n_groups = len(group_mean)
    # enough groups per bin that every fold can get one of each, at most MAX_BINS bins
    n_bins = max(1, min(MAX_BINS, n_groups // n_folds))
    order = sorted(group_mean, key=lambda g: (group_mean[g], g))
    group_bin = {g: (rank * n_bins) // n_groups for rank, g in enumerate(order)}
    return np.array([group_bin[g] for g in groups])


def check_fold_count(n_folds: int, sessions: list[Session]) -> None:
    """Refuse (usage error, exit 2) a fold count the data cannot fill: fewer than 2, or more than its clients
    (all sessions of a client stay in one fold). A run checks it before any work (`care.run.preflight`)."""
    if n_folds < 2:
        raise UsageError(f"cv.folds={n_folds}: need at least 2 folds")
    n_groups = len(set(_groups(sessions)))
    if n_groups < n_folds:
        raise UsageError(
            f"cv.folds={n_folds} but the data has only {n_groups} client(s) ({len(sessions)} sessions): "
            "all sessions of a client stay in one fold, so use fewer folds or more clients"
        )


def make_folds(sessions: Iterable[Session], instrument: Instrument, n_folds: int, seed: int) -> list[list[str]]:
    """Split sessions into `n_folds` client-grouped, score-stratified folds of session ids.

    Returns one sorted list of session ids per fold; fold order is the splitter's. Deterministic for a
    given set of sessions and seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    sessions = sorted(sessions, key=lambda s: s.session_id)
    check_fold_count(n_folds, sessions)
    ids = [s.session_id for s in sessions]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise CareError(f"duplicate session ids: {', '.join(dupes[:5])}")
    groups = np.array(_groups(sessions))
    strata = _strata(sessions, instrument, n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds: list[list[str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only k members"
        for _, test in splitter.split(np.zeros(len(sessions)), strata, groups):
            folds.append(sorted(ids[i] for i in test))
    empty = [i for i, f in enumerate(folds) if not f]
    if empty:  # defensive: the splitter should never leave a fold empty when groups >= folds
        raise CareError(f"fold(s) {empty} came out empty: use fewer folds")
    return folds


def fold_of(folds: list[list[str]]) -> dict[str, int]:
    """Session id -> index of the fold that holds it out."""
    return {sid: i for i, fold in enumerate(folds) for sid in fold}


def split(folds: list[list[str]], k: int) -> tuple[list[str], list[str]]:
    """(training session ids, held-out session ids) for fold `k`, each sorted."""
    train = sorted(sid for i, fold in enumerate(folds) if i != k for sid in fold)
    return train, list(folds[k])


def folds_document(folds: list[list[str]], sessions: Iterable[Session], seed: int) -> dict:
    """`metrics/folds.json`: session ids per fold and how many clients each holds (ids only, no text)."""
    sessions = list(sessions)
    client = dict(zip((s.session_id for s in sessions), _groups(sessions)))
    out = []
    for i, fold in enumerate(folds):
        entry: dict = {"fold": i, "n_sessions": len(fold), "sessions": list(fold)}
        entry["clients"] = len({client.get(sid, f"session:{sid}") for sid in fold})
        out.append(entry)
    return {"n_folds": len(folds), "seed": seed, "folds": out}


def plan_folds(sessions: list[Session], instrument: Instrument, n_folds: int, seed: int) -> dict:
    """`make_folds` as the folds document every later step reads."""
    return folds_document(make_folds(sessions, instrument, n_folds, seed), sessions, seed)
