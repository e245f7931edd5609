"""Synthetic annotated counseling corpus: the stand-in for the non-public CounselingWAI data.

``generate(...)`` returns the sessions (``care.data.schema.Session``) and the corpus card; ``write_corpus(...)``
writes ``sessions.jsonl`` and ``card.json`` atomically. Output is byte-identical for the same arguments.
The generative model is documented in ``care.data.synth.model``; the utterance banks (our own wording) live in
``phrases_zh`` / ``phrases_en``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from care.errors import UsageError
from care.data.instrument import load_instrument
from care.data.schema import Session, Turn
from care.data.synth import phrases_en, phrases_zh
from care.data.synth.card import build_card
from care.data.synth.dialogue import SessionWriter, Stream
from care.data.synth.model import DIMENSIONS, GenParams, draw

GENERATOR = "care.data.synth"
OWN_CARDS = (GENERATOR, "care.synth")  # the generator's names, old and new, as card.json records them
VERSION = "1.0.0"
LANGUAGES = {"zh": phrases_zh, "en": phrases_en}
LENGTH_SD = 0.2  # log-normal spread of the number of utterances around mean_utterances

__all__ = ["generate", "write_corpus", "GENERATOR", "VERSION", "GenParams"]


def _check(n_sessions: int, n_clients: int | None, language: str, seed: int, mean_utterances: int) -> int:
    if n_sessions < 1:
        raise UsageError("--sessions must be at least 1")
    n_clients = max(1, n_sessions // 5) if n_clients is None else n_clients
    if n_clients < 1 or n_clients > n_sessions:
        raise UsageError(f"--clients must be between 1 and the number of sessions ({n_sessions})")
    if language not in LANGUAGES:
        raise UsageError(f"--language must be one of {', '.join(LANGUAGES)}")
    if seed < 0:
        raise UsageError("--seed must be non-negative")
    if mean_utterances < 10:
        raise UsageError("--utterances must be at least 10")
    return n_clients


def generate(n_sessions: int = 400, n_clients: int | None = None, language: str = "zh", seed: int = 0,
             mean_utterances: int = 24, params: GenParams | None = None) -> tuple[list[Session], dict]:
    """The corpus as Session objects plus its card (a JSON-ready dict without transcript text)."""
    sessions: list[Session] = []
    card = _produce(sessions.append, n_sessions, n_clients, language, seed, mean_utterances, params)
    return sessions, card


def _produce(emit, n_sessions: int, n_clients: int | None, language: str, seed: int, mean_utterances: int,
             params: GenParams | None) -> dict:
    """Generate session by session, handing each Session to `emit`; return the card."""
    n_clients = _check(n_sessions, n_clients, language, seed, mean_utterances)
    params = params or GenParams()
    inst = load_instrument("wai-sr")
    if sorted(inst.dimensions) != sorted(DIMENSIONS):
        raise UsageError(f"the generator models dimensions {', '.join(DIMENSIONS)}")
    by_dim = inst.items_by_dimension
    k_items = max(len(by_dim[d]) for d in DIMENSIONS)
    lo, hi = inst.scale.min, inst.scale.max
    bank = LANGUAGES[language]

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    text_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    d = draw(rng, n_sessions, n_clients, k_items, len(bank.TOPICS), lo, hi, params)
    st = Stream(text_rng)
    writer = SessionWriter(bank, params)

    wc = len(str(n_sessions)) if n_sessions > 99999 else 5
    wcl = max(4, len(str(n_clients)))
    wt = max(2, len(str(d.n_counselors)))
    dim_index = {dim: k for k, dim in enumerate(DIMENSIONS)}
    labels = {pt: inst.scale.labels[pt][language] for pt in inst.scale.points}

    cue_balance = np.zeros((n_sessions, len(DIMENSIONS)))
    flags = {"late": [], "disengaged": [], "rupture": [], "rupture_repaired": [], "mmhmm_overuse": []}
    n_turns = np.zeros(n_sessions, dtype=np.int64)
    turn_len = 0
    rationale_len = 0
    n_quotes = 0
    qo = bank.QUOTE[0]
    measure = (lambda t: len(t.split())) if language == "en" else len

    z_all = d.z.tolist()
    for i in range(n_sessions):
        z = {dim: z_all[i][dim_index[dim]] for dim in DIMENSIONS}
        n_utts = max(10, int(round(mean_utterances * math.exp(LENGTH_SD * st.normal()))))
        topic = bank.TOPICS[int(d.topic[i])]
        built = writer.build(st, z, bool(d.late[i]), int(d.visit[i]), topic, n_utts)

        client_ratings: dict[str, int] = {}
        counselor_ratings: dict[str, int] | None = {} if d.has_counselor[i] else None
        rationales: dict[str, str] = {}
        for item_id in inst.item_ids:
            dim = inst.item(item_id).dimension
            slot = by_dim[dim].index(item_id)
            k = dim_index[dim]
            score = int(d.client_items[i, k, slot])
            client_ratings[item_id] = score
            if counselor_ratings is not None:
                counselor_ratings[item_id] = int(d.counselor_items[i, k, slot])
            text = writer.rationale(st, built, dim, slot, score, labels[score], lo, hi)
            rationales[item_id] = text
            rationale_len += measure(text)
            n_quotes += text.count(qo) if qo != '"' else text.count('"') // 2

        for k, dim in enumerate(DIMENSIONS):
            pos, neg = built.cues[dim]
            cue_balance[i, k] = (pos - neg) / (pos + neg + 1)
        f = built.flags
        flags["late"].append(f["late"])
        flags["disengaged"].append(f["disengaged"])
        flags["rupture"].append(f["rupture"])
        flags["rupture_repaired"].append(f["repaired"])
        flags["mmhmm_overuse"].append(f["mmhmm"] >= 2)
        n_turns[i] = len(built.turns)
        turn_len += sum(measure(t) for _, t in built.turns)
        # model_construct: the values are built to the schema here (the tests parse every line back)
        emit(Session.model_construct(
            session_id=f"s{i + 1:0{wc}d}",
            client_id=f"c{int(d.client[i]) + 1:0{wcl}d}",
            counselor_id=f"t{int(d.counselor[i]) + 1:0{wt}d}",
            language=language,
            context=None,
            turns=[Turn.model_construct(speaker=s, text=t) for s, t in built.turns],
            client_ratings=client_ratings,
            counselor_ratings=counselor_ratings,
            rationales=rationales,
            helper_ratings=None,
        ))

    dims = list(DIMENSIONS)
    client_scores = d.client_items.mean(axis=2)
    counselor_scores = d.counselor_items.mean(axis=2)
    card = build_card(
        name=GENERATOR, version=VERSION,
        arguments={"n_sessions": n_sessions, "n_clients": n_clients, "language": language, "seed": seed,
                   "mean_utterances": mean_utterances},
        instrument=inst.name, params={**params.to_dict(), "length_sd": LENGTH_SD}, dims=dims,
        client_scores=client_scores, counselor_scores=counselor_scores, has_counselor=d.has_counselor,
        latent=d.latent, cue_balance=cue_balance, n_clients=n_clients, n_counselors=d.n_counselors,
        flags=flags, n_turns=n_turns, turn_chars=turn_len / max(1, int(n_turns.sum())),
        rationale_chars=rationale_len / (n_sessions * len(inst.item_ids)),
        quotes_per_rationale=n_quotes / (n_sessions * len(inst.item_ids)), language=language,
    )
    return card


def write_corpus(out: str | Path, n_sessions: int = 400, n_clients: int | None = None, language: str = "zh",
                 seed: int = 0, mean_utterances: int = 24) -> dict:
    """Write ``out/sessions.jsonl`` and ``out/card.json`` (each atomically); return the card.

    `out` must be absent, empty or a corpus this generator wrote (its card.json says so): checked first."""
    from care.fsutil import atomic_write_bytes, atomic_write_json, check_output_dir

    check_output_dir(out, "card.json", lambda card: isinstance(card, dict) and card.get("generator") in OWN_CARDS,
                     "`care synth`")
    lines: list[bytes] = []
    card = _produce(lambda s: lines.append(s.to_json().encode("utf-8")), n_sessions, n_clients, language, seed,
                    mean_utterances, None)
    out = Path(out)
    lines.append(b"")
    data = b"\n".join(lines)
    del lines
    atomic_write_bytes(out / "sessions.jsonl", data)
    atomic_write_json(out / "card.json", card)
    return card


def _main() -> None:  # pragma: no cover - debugging aid: print the card of a default corpus
    print(json.dumps(generate()[1], indent=2, ensure_ascii=False))
