"""What steps hand to each other besides JSON: model directories."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDir:
    """A model directory (a base, a fine-tuned adapter, a release package) passed between steps.

    `key` names its content independently of where it lies (a cache key, a manifest digest), so a copy in
    another step's scratch space is recognised as the same model. `travels`: its files go through the
    artifact store to the next step; otherwise `path` is a reference (a hub id, or a local path the user
    provides on every machine, as for the real presets' multi-GB bases) and only the reference travels.
    """

    path: str
    key: str
    travels: bool = True
