"""Synthetic sessions at CounselingWAI length for the benchmarks (care.data.synth, utterances lengthened)."""

from __future__ import annotations

import random


def lengthen(sessions, utterances: int, chars: int, seed: int):
    """Sessions with `utterances` turns of `chars` +-40% characters (mean `chars`), cut from each session's
    own utterances joined, so the text stays on topic."""
    rng = random.Random(seed)
    out = []
    for s in sessions:
        pool = [t.text for t in s.turns]
        turns = []
        for k in range(utterances):
            speaker = ("counselor", "client")[k % 2]
            want = rng.randint(round(chars * 0.6), round(chars * 1.4))
            text = ""
            while len(text) < want:
                text += pool[rng.randrange(len(pool))]
            text = text[:want]
            turns.append({"speaker": speaker, "text": text})
        out.append(s.model_copy(update={"turns": [type(s.turns[0])(**t) for t in turns]}))
    return out
