"""The classical, non-LLM peer: TF-IDF n-grams of the transcript + ridge regression, one per item.

Three views of each session: the whole transcript (speaker-tagged turns), the client's turns and the
counselor's turns. Each view gets word 1-2-gram and character 2-5-gram (within word boundaries) TF-IDF
features (sublinear tf, fitted on the training sessions only); the six blocks are stacked and a ridge
regression per item is fitted on the training sessions' client ratings, each item's penalty chosen by
efficient leave-one-out over a fixed grid (``RidgeCV``), again on the training sessions only (items rated
on the same sessions share one decomposition; the fit is the same as one model per item). Held-out predictions
are clipped to the instrument's scale.

Everything is deterministic (no random state is involved): the same sessions give the same numbers.
Predictions come in the shape ``care.evaluation.metrics.evaluate`` takes: ``{session_id: {item: float}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from care.errors import CareError
from care.data.instrument import Instrument
from care.data.schema import Session

ALPHAS = tuple(float(a) for a in np.logspace(-1, 3, 9))
MAX_FEATURES = 30000  # per block
VIEWS = ("transcript", "client", "counselor")


def session_views(session: Session) -> dict[str, str]:
    """The three texts of a session (the transcript keeps the speaker of every turn)."""
    return {
        "transcript": "\n".join(f"{t.speaker}: {t.text}" for t in session.turns),
        "client": "\n".join(t.text for t in session.turns if t.speaker == "client"),
        "counselor": "\n".join(t.text for t in session.turns if t.speaker == "counselor"),
    }


def _vectorizers(n_train: int) -> list[tuple[str, object]]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    min_df = 2 if n_train >= 20 else 1
    common = dict(sublinear_tf=True, min_df=min_df, max_features=MAX_FEATURES, dtype=np.float64)
    out = []
    for view in VIEWS:
        out.append((view, TfidfVectorizer(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b", **common)))
        out.append((view, TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), **common)))
    return out


def _features(train: Sequence[Session], test: Sequence[Session]):
    from scipy import sparse

    train_views = [session_views(s) for s in train]
    test_views = [session_views(s) for s in test]
    train_blocks, test_blocks = [], []
    for view, vec in _vectorizers(len(train)):
        train_docs = [v[view] for v in train_views]
        try:
            train_blocks.append(vec.fit_transform(train_docs))
        except ValueError:  # empty vocabulary (e.g. a view with no text at all): leave the block out
            continue
        test_blocks.append(vec.transform([v[view] for v in test_views]))
    if not train_blocks:
        raise CareError("tfidf baseline: no features could be built from the training transcripts")
    return sparse.hstack(train_blocks, format="csr"), sparse.hstack(test_blocks, format="csr")


def tfidf_predictions(
    train_sessions: Iterable[Session], test_sessions: Iterable[Session], instrument: Instrument
) -> dict[str, dict[str, float]]:
    """Fit on ``train_sessions`` (their client ratings), predict every item of ``test_sessions``."""
    from sklearn.linear_model import RidgeCV

    train = sorted(train_sessions, key=lambda s: s.session_id)  # input order never matters
    test = list(test_sessions)
    if not test:
        return {}
    rated = [s for s in train if s.client_ratings]
    if len(rated) < 2:
        raise CareError(f"tfidf baseline: {len(rated)} rated training session(s); need at least 2")
    x_train, x_test = _features(rated, test)
    lo, hi = instrument.scale.min, instrument.scale.max
    preds: dict[str, dict[str, float]] = {s.session_id: {} for s in test}
    items = instrument.item_ids
    # items rated on the same training sessions share one fit (one decomposition, a penalty per item)
    groups: dict[tuple[int, ...], list[str]] = {}
    for item in items:
        rows = tuple(k for k, s in enumerate(rated) if item in s.client_ratings)
        if len(rows) < 2:
            raise CareError(f"tfidf baseline: item {item} has {len(rows)} training rating(s); need at least 2")
        groups.setdefault(rows, []).append(item)
    for rows, group in groups.items():
        y = np.array([[rated[k].client_ratings[i] for i in group] for k in rows], dtype=float)
        model = RidgeCV(alphas=ALPHAS, fit_intercept=True, alpha_per_target=True)
        model.fit(x_train[list(rows)], y)
        out = np.clip(np.asarray(model.predict(x_test)).reshape(len(test), len(group)), lo, hi)
        for s, values in zip(test, out):
            for item, value in zip(group, values):
                preds[s.session_id][item] = float(value)
    return preds
