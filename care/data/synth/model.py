"""The generative model behind the synthetic corpus: latents, ratings, and the behaviours they drive.

Everything here is vectorised numpy on one seeded ``numpy.random.Generator``; the text is produced
afterwards (``care.data.synth.dialogue``) from a second, independent stream, so the ratings of a corpus do not
change with the language or the session length.

Model (z units are standard-normal-like; "dim" runs over the instrument's dimensions goal, task, bond):

1. Clients and counselors. Session i belongs to client c(i); every client has at least one session and
   the rest are spread with gamma(2)-distributed weights, so some clients come back often. Each client
   sees one counselor t(c), drawn uniformly from ``max(1, min(99, round(n_clients / 8)))`` counselors.
2. Latent alliance. ``z[i] = sqrt(client_share) * u[c(i)] + sqrt(1 - client_share) * e[i] + k[t]``
   where ``u`` (client random effect, shared by all that client's sessions) and ``e`` (session effect)
   are 3-d normal with correlation ``dim_corr`` between dimensions, and ``k[t]`` is a counselor skill
   offset (same for all dims, sd ``counselor_skill_sd``).
3. Lateness. With probability ``late_rate`` the counselor is late; that lowers the latent by
   ``late_shift`` (bond and task) before anything else is drawn from it.
4. Client ratings. ``latent[i, dim] = latent_mean[dim] + latent_sd * z[i, dim]`` (the 1-5 scale);
   item rating = clip(round(latent + occasion + item noise), 1, 5) where ``occasion`` (sd ``occasion_sd``)
   is shared by the items of one dimension in one session and item noise has sd ``item_sd``.
5. Counselor ratings (present with probability ``counselor_rate`` = 728/793, as in the paper): lenient
   and only weakly linked to the client's latent:
   ``counselor_mean + lenience[t] + counselor_sd * (link[dim] * z + sqrt(1 - link^2) * noise)`` plus item
   noise, rounded and clipped.
6. Behaviours (what the text shows), drawn from the latents:
   - each exchange of a dimension's phase is a cue with probability ``cue_rate``; a cue is positive
     (clear shared goal / collaborative plan / attuned empathy) with probability
     ``sigmoid(cue_slope * (z + N(0, cue_noise)))`` and negative (vague goal / unactionable advice /
     mechanical empathy) otherwise; the client's reaction follows the counselor's behaviour;
   - "mm-hmm" overuse: any neutral counselor turn becomes a bare "嗯嗯 / mm-hmm" with probability
     ``sigmoid(-mmhmm_slope * z_bond + mmhmm_bias)``;
   - rupture with probability ``sigmoid(-rupture_slope * z_bond + rupture_bias)``; repaired with
     probability ``sigmoid(repair_slope * z_bond + repair_bias)``;
   - polite disengagement with probability ``sigmoid(-disengage_slope * mean(z) + disengage_bias)``: the
     client's replies turn short while the words stay polite (thanks, "you are right"), so the latent is
     low although the wording is friendly;
   - the client's closing line is engaged (names the next step) when the mean latent is high.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DIMENSIONS = ("goal", "task", "bond")


@dataclass(frozen=True)
class GenParams:
    dim_corr: float = 0.6
    client_share: float = 0.45
    counselor_skill_sd: float = 0.2
    latent_mean: dict = field(default_factory=lambda: {"goal": 4.05, "task": 4.0, "bond": 4.2})
    latent_sd: float = 0.85
    occasion_sd: float = 0.3
    item_sd: float = 0.5
    late_rate: float = 0.1
    late_shift: dict = field(default_factory=lambda: {"goal": 0.0, "task": -0.4, "bond": -0.7})
    counselor_rate: float = 728 / 793
    counselor_mean: float = 4.3
    counselor_lenience_sd: float = 0.2
    counselor_sd: float = 0.5
    counselor_link: dict = field(default_factory=lambda: {"goal": 0.42, "task": 0.42, "bond": 0.4})
    counselor_item_sd: float = 0.45
    cue_rate: float = 0.8
    cue_slope: float = 2.5
    cue_noise: float = 0.3
    mmhmm_slope: float = 2.0
    mmhmm_bias: float = -1.6
    rupture_slope: float = 1.5
    rupture_bias: float = -2.4
    repair_slope: float = 2.0
    repair_bias: float = 1.5
    disengage_slope: float = 2.0
    disengage_bias: float = -3.0

    def to_dict(self) -> dict:
        return asdict(self)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Draws:
    """Per-session numbers (rows = sessions, columns = DIMENSIONS)."""

    client: np.ndarray  # (n,) client index
    visit: np.ndarray  # (n,) 1-based visit number of this session for its client
    counselor: np.ndarray  # (n,) counselor index
    z: np.ndarray  # (n, 3) latent alliance, z units, after lateness
    latent: np.ndarray  # (n, 3) latent on the rating scale
    late: np.ndarray  # (n,) bool
    client_items: np.ndarray  # (n, 3, k) int ratings per dimension and item slot
    has_counselor: np.ndarray  # (n,) bool
    counselor_items: np.ndarray  # (n, 3, k) int
    topic: np.ndarray  # (n,) topic index (per client)
    n_counselors: int


def n_counselors_for(n_clients: int) -> int:
    return max(1, min(99, round(n_clients / 8)))


def draw(rng: np.random.Generator, n_sessions: int, n_clients: int, items_per_dim: int, n_topics: int,
         lo: int, hi: int, p: GenParams) -> Draws:
    d = len(DIMENSIONS)
    # 1. clients, visits, counselors
    extra = n_sessions - n_clients
    weights = rng.gamma(2.0, 1.0, size=n_clients)
    extra_clients = rng.choice(n_clients, size=extra, p=weights / weights.sum()) if extra > 0 else np.zeros(0, int)
    client = rng.permutation(np.concatenate([np.arange(n_clients), extra_clients]).astype(np.int64))
    visit = np.zeros(n_sessions, dtype=np.int64)
    seen = np.zeros(n_clients, dtype=np.int64)
    for i, c in enumerate(client.tolist()):
        seen[c] += 1
        visit[i] = seen[c]
    n_counselors = n_counselors_for(n_clients)
    counselor_of_client = rng.integers(0, n_counselors, size=n_clients)
    counselor = counselor_of_client[client]
    topic = rng.integers(0, n_topics, size=n_clients)[client]
    # 2. latents
    corr = np.full((d, d), p.dim_corr) + (1 - p.dim_corr) * np.eye(d)
    chol = np.linalg.cholesky(corr)
    u = rng.standard_normal((n_clients, d)) @ chol.T
    e = rng.standard_normal((n_sessions, d)) @ chol.T
    skill = rng.normal(0.0, p.counselor_skill_sd, size=n_counselors)
    z = np.sqrt(p.client_share) * u[client] + np.sqrt(1 - p.client_share) * e + skill[counselor][:, None]
    # 3. lateness
    late = rng.random(n_sessions) < p.late_rate
    shift = np.array([p.late_shift[k] for k in DIMENSIONS])
    z = z + late[:, None] * shift[None, :]
    # 4. client ratings
    mean = np.array([p.latent_mean[k] for k in DIMENSIONS])
    latent = mean[None, :] + p.latent_sd * z
    occasion = rng.normal(0.0, p.occasion_sd, size=(n_sessions, d))
    noise = rng.normal(0.0, p.item_sd, size=(n_sessions, d, items_per_dim))
    client_items = np.clip(np.rint(latent[:, :, None] + occasion[:, :, None] + noise), lo, hi).astype(np.int64)
    # 5. counselor ratings
    has_counselor = rng.random(n_sessions) < p.counselor_rate
    lenience = rng.normal(0.0, p.counselor_lenience_sd, size=n_counselors)
    link = np.array([p.counselor_link[k] for k in DIMENSIONS])
    eta = rng.standard_normal((n_sessions, d))
    perceived = p.counselor_mean + lenience[counselor][:, None] + p.counselor_sd * (link * z + np.sqrt(1 - link**2) * eta)
    cnoise = rng.normal(0.0, p.counselor_item_sd, size=(n_sessions, d, items_per_dim))
    counselor_items = np.clip(np.rint(perceived[:, :, None] + cnoise), lo, hi).astype(np.int64)
    return Draws(client=client, visit=visit, counselor=counselor, z=z, latent=latent, late=late,
                 client_items=client_items, has_counselor=has_counselor, counselor_items=counselor_items,
                 topic=topic, n_counselors=n_counselors)
