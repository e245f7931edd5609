"""Turn one session's latents into a transcript, and its ratings into grounded rationales.

A session runs opening -> exploration (bond cues) -> goal setting (goal cues) -> work (task cues, maybe a
rupture) -> ending. Every cue exchange is recorded as evidence (dimension, valence, the utterance indices
it spans); rationales quote those utterances verbatim, so every quoted span is a substring of the
transcript.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


class Stream:
    """Uniform draws from a numpy Generator, fetched in blocks (scalar numpy calls are slow)."""

    def __init__(self, rng: np.random.Generator, block: int = 16384):
        self._rng = rng
        self._block = block
        self._buf: list[float] = []
        self._pos = 0

    def u(self) -> float:
        if self._pos >= len(self._buf):
            self._buf = self._rng.random(self._block).tolist()
            self._pos = 0
        x = self._buf[self._pos]
        self._pos += 1
        return x

    def chance(self, p: float) -> bool:
        return self.u() < p

    def pick(self, seq):
        return seq[int(self.u() * len(seq))]

    def normal(self) -> float:
        # Box-Muller on two uniforms (deterministic, pure Python)
        u1 = 1.0 - self.u()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.u())

    def shuffled(self, seq: list) -> list:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):
            j = int(self.u() * (i + 1))
            out[i], out[j] = out[j], out[i]
        return out


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class Evidence:
    kind: str  # exchange | late | mmhmm | rupture | disengaged | end
    dims: tuple  # dimensions this evidence bears on
    valence: int  # +1, 0, -1
    idx: tuple  # utterance indices quoted, in the order of the EVIDENCE template slots {a}, {b}


@dataclass
class Built:
    turns: list = field(default_factory=list)  # [(speaker, text)]
    evidence: list = field(default_factory=list)
    cues: dict = field(default_factory=dict)  # dim -> [n_pos, n_neg]
    flags: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict)  # dim -> (all, positive, negative, neutral) evidence, cached


class SessionWriter:
    def __init__(self, bank_module, params):
        self.L = bank_module
        self.B = bank_module.BANK
        self.p = params
        self.en = bank_module.LANGUAGE == "en"

    # -- text helpers ---------------------------------------------------------------------------------
    def _fill(self, st: Stream, key: str, topic: dict, used: set, index: int | None = None) -> str:
        options = self.B[key]
        if index is not None:  # the answer paired with a counselor question
            text = options[index]
            used.add(text)
            return text.format(**topic) if "{" in text else text
        text = st.pick(options)
        for _ in range(3):  # avoid exact repeats within a session where the bank allows
            if text not in used:
                break
            text = st.pick(options)
        used.add(text)
        return text.format(**topic) if "{" in text else text

    def _cap(self, text: str) -> str:
        return text[:1].upper() + text[1:] if self.en else text

    def _prefixed(self, st: Stream, text: str, prefixes: list) -> str:
        pre = st.pick(prefixes)
        if not pre:
            return self._cap(text)
        if self.en:
            if pre.endswith(". ") or text.startswith(("I ", "I'")):
                return pre + self._cap(text)
            return pre + text[:1].lower() + text[1:]
        return pre + text

    # -- the session ------------------------------------------------------------------------------------
    def build(self, st: Stream, z: dict, late: bool, visit: int, topic: dict, n_utts: int) -> Built:
        p, L = self.p, self.L
        b = Built(cues={d: [0, 0] for d in ("goal", "task", "bond")})
        used: set = set()
        turns = b.turns
        zbar = (z["goal"] + z["task"] + z["bond"]) / 3.0
        disengaged = st.chance(_sig(-p.disengage_slope * zbar + p.disengage_bias))
        p_mm = _sig(-p.mmhmm_slope * z["bond"] + p.mmhmm_bias)
        rupture = st.chance(_sig(-p.rupture_slope * z["bond"] + p.rupture_bias))
        repaired = rupture and st.chance(_sig(p.repair_slope * z["bond"] + p.repair_bias))
        b.flags = {"late": late, "disengaged": disengaged, "rupture": rupture, "repaired": repaired}
        short_idx: list = []
        polite_idx: list = []
        mm_idx: list = []

        def say(speaker: str, text: str) -> int:
            turns.append((speaker, text))
            return len(turns) - 1

        def client_reply(key: str, valence: int, index: int | None = None) -> int:
            if disengaged and (valence <= 0 or st.chance(0.5)) and st.chance(0.75):
                if st.chance(0.4):
                    i = say("client", self._fill(st, "cl_polite", topic, used))
                    polite_idx.append(i)
                else:
                    i = say("client", self._fill(st, "cl_short", topic, used))
                    short_idx.append(i)
                return i
            text = self._prefixed(st, self._fill(st, key, topic, used, index), L.CL_PREFIX)
            if valence > 0 and not disengaged and st.chance(0.25):
                text = (text if self.en else text.rstrip("。！")) + st.pick(L.CL_ELABORATE)
            return say("client", text)

        # opening
        if late:
            a = say("client", self._fill(st, "cl_late_wait", topic, used))
            c = say("counselor", self._fill(st, "c_late_apology", topic, used))
            b.evidence.append(Evidence("late", ("task", "bond"), -1, (a, c)))
        else:
            say("counselor", self._fill(st, "c_greet_followup" if visit > 1 and st.chance(0.7) else "c_greet", topic, used))
        client_reply("cl_present", 0)

        fixed = 4 + (1 if late else 0)
        m = max(3, (n_utts - fixed) // 2)
        use_rupture = rupture and m >= 6
        if use_rupture:
            m -= 2
        m_bond = max(1, round(m * 0.36))
        m_goal = max(1, round(m * 0.3))
        m_task = max(1, m - m_bond - m_goal)
        rupture_at = int(st.u() * m_task) if use_rupture else -1

        def phase(dim: str, count: int, neutral_c: str, neutral_cl: str) -> None:
            prob = _sig(p.cue_slope * (z[dim] + p.cue_noise * st.normal()))
            for j in range(count):
                if dim == "task" and j == rupture_at:
                    rupture_block()
                if st.chance(p.cue_rate):
                    val = 1 if st.chance(prob) else -1
                    b.cues[dim][0 if val > 0 else 1] += 1
                    tag = "pos" if val > 0 else "neg"
                    c = say("counselor", self._prefixed(st, self._fill(st, f"c_{dim}_{tag}", topic, used), L.C_PREFIX)
                            if val > 0 and dim == "bond" else self._fill(st, f"c_{dim}_{tag}", topic, used))
                    a = client_reply(f"cl_{dim}_{tag}", val)
                    b.evidence.append(Evidence("exchange", (dim,), val, (c, a)))
                else:
                    j = None
                    if st.chance(p_mm):
                        c = say("counselor", self._fill(st, "c_mmhmm", topic, used))
                        mm_idx.append(c)
                    else:
                        j = int(st.u() * len(self.B[neutral_c]))
                        c = say("counselor", self._fill(st, neutral_c, topic, used, j))
                    a = client_reply(neutral_cl, 0, j)
                    b.evidence.append(Evidence("exchange", (dim,), 0, (c, a)))

        def rupture_block() -> None:
            c0 = say("counselor", self._fill(st, "c_bond_neg", topic, used))
            r = say("client", self._fill(st, "cl_rupture", topic, used))
            if repaired:
                c = say("counselor", self._fill(st, "c_repair", topic, used))
                say("client", self._fill(st, "cl_repaired", topic, used))
                b.evidence.append(Evidence("rupture", ("bond",), 1, (r, c)))
            else:
                c = say("counselor", self._fill(st, "c_unrepaired", topic, used))
                say("client", self._fill(st, "cl_unrepaired", topic, used))
                b.evidence.append(Evidence("rupture", ("bond",), -1, (r, c)))
            del c0

        phase("bond", m_bond, "c_explore", "cl_explore")
        phase("goal", m_goal, "c_goal_neutral", "cl_goal_neutral")
        phase("task", m_task, "c_task_neutral", "cl_task_neutral")

        # ending
        good = (b.cues["goal"][0] + b.cues["task"][0]) > (b.cues["goal"][1] + b.cues["task"][1])
        say("counselor", self._fill(st, "c_end_pos" if good else "c_end_flat", topic, used))
        if disengaged:
            i = say("client", self._fill(st, "cl_end_polite", topic, used))
            polite_idx.append(i)
        elif zbar + 0.4 * st.normal() > 0.2:
            i = say("client", self._fill(st, "cl_end_engaged", topic, used))
            b.evidence.append(Evidence("end", ("goal", "task"), 1, (i,)))
        else:
            say("client", self._fill(st, "cl_end_flat", topic, used))

        if mm_idx:
            b.evidence.append(Evidence("mmhmm", ("bond",), -1, (mm_idx[0],)))
        if disengaged and short_idx and polite_idx:
            b.evidence.append(Evidence("disengaged", ("goal", "task", "bond"), -1, (short_idx[0], polite_idx[0])))
        b.flags["mmhmm"] = len(mm_idx)
        return b

    # -- rationales --------------------------------------------------------------------------------------
    def _measure(self, text: str) -> int:
        return len(text.split()) if self.en else len(text)

    def _ev_text(self, st: Stream, ev: Evidence, turns: list, short: bool) -> str:
        qo, qc = self.L.QUOTE
        quotes = [qo + turns[i][1] + qc for i in ev.idx]
        tmpl = st.pick((self.L.EVIDENCE_SHORT if short else self.L.EVIDENCE)[ev.kind])
        return tmpl.format(a=quotes[0], b=quotes[1] if len(quotes) > 1 else quotes[0])

    def _interp(self, st: Stream, ev: Evidence, dim: str, avoid: str = "") -> str:
        I = self.L.INTERP
        key = (ev.kind, ev.valence)
        options = I[key] if ev.kind != "exchange" and key in I else I[(dim, ev.valence)]
        text = st.pick(options)
        if text == avoid and len(options) > 1:
            text = options[(options.index(text) + 1) % len(options)]
        return text

    def rationale(self, st: Stream, built: Built, dim: str, slot: int, score: int, label: str,
                  lo: int, hi: int) -> str:
        """An expert-style rationale for one item: the rating, the exchanges behind it (quoted verbatim)."""
        pools = built.pools.get(dim)
        if pools is None:
            pool = [e for e in built.evidence if dim in e.dims]
            pools = built.pools[dim] = (pool, [e for e in pool if e.valence > 0], [e for e in pool if e.valence < 0],
                                        [e for e in pool if e.valence == 0])
        pool, pos, neg, neu = pools
        mid_point = (lo + hi) / 2.0
        shift = int(st.u() * 2)

        def nth(lst: list) -> Evidence:
            return lst[(slot + shift) % len(lst)]

        if score > mid_point:
            main, other, frame, but = pos, neg, "high", "high_but"
        elif score < mid_point:
            main, other, frame, but = neg, pos, "low", "low_but"
        else:
            main, other, frame, but = [], [], "mid", ""
        plan: list = []  # (frame, [evidence...])
        if frame == "mid":
            e1 = nth(pos or neu or neg)
            rest = [e for e in (neg or neu or pos) if e is not e1] or [e for e in pool if e is not e1]
            plan = [("mid", [e1, nth(rest)])] if rest else [("high_but" if e1.valence < 0 else "low_but", [e1])]
        elif main:
            e1 = nth(main)
            extra = [e for e in main if e is not e1]
            plan = [(frame, [e1, nth(extra)])] if extra else [(frame, [e1])]
        else:
            e1 = nth(other or neu)
            plan = [(but, [e1])]
        kind, evs = plan[0]
        R = self.L.RATIONALE
        tmpl = st.pick(R[kind])
        more = st.pick(R["more"])
        draws = [(st.u(), st.u()) for _ in evs]  # fixed draws so retries do not change the stream length
        best = ""
        for short in (False, True):
            interps, evtexts = [], []
            for (u1, u2), ev in zip(draws, evs):
                sub = _Fixed(st, u1)
                evtexts.append(self._ev_text(sub, ev, built.turns, short))
                interps.append(self._interp(_Fixed(st, u2), ev, dim, interps[0] if interps else ""))
            fmt = dict(score=score, label=label, ev=evtexts[0], interp=interps[0])
            if kind == "mid":
                text = tmpl.format(ev2=evtexts[1], interp2=interps[1], **fmt)
                candidates = [text]
            else:
                text = tmpl.format(**fmt)
                candidates = [text + more.format(ev=evtexts[1], interp=interps[1]), text] if len(evs) > 1 else [text]
            for cand in candidates:
                if self._measure(cand) <= self.L.RATIONALE_MAX:
                    return cand
            best = candidates[-1]
        return best


class _Fixed:
    """A stand-in stream that answers every draw with one pre-drawn uniform (keeps retries deterministic)."""

    def __init__(self, st: Stream, u: float):
        self._u = u

    def u(self) -> float:
        return self._u

    def pick(self, seq):
        return seq[int(self._u * len(seq))]
