"""What marks a directory as an embedded base, and its content digest (what `model.tiny_base.digest` pins)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from care.errors import CareError

BASE_CARD = "care_base.json"  # written into every embedded base: marks it and records how it was built


def base_digest(directory: str | Path) -> str:
    """sha256 over every file's relative path and sha256, in path order."""
    root = Path(directory)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def check_base_out(out: str | Path) -> None:
    """Refuse, before any work, an output path that holds something other than an earlier base."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise CareError(f"{out}: exists and is not a directory; refusing to replace it")
    if any(out.iterdir()) and not (out / BASE_CARD).is_file():
        raise CareError(f"{out}: exists and is not a base this tool built (no {BASE_CARD}); refusing to replace it")


def base_provenance(directory: str | Path, key: str) -> dict:
    """What a release records about an embedded base: its digest and how it was built (numbers and ids)."""
    card_path = Path(directory) / BASE_CARD
    if not card_path.is_file():
        return {}
    card = json.loads(card_path.read_text("utf-8"))
    build = card.get("base_build") or {}
    corpus = build.get("corpus") or {}
    return {
        "digest": key, "build_digest": card.get("build_digest"), "parameters": card.get("parameters"),
        "layers": build.get("layers"), "hidden_size": build.get("hidden_size"), "vocab_size": card.get("vocab_size"),
        "pretrain_tokens": card.get("pretrain_tokens"), "heldout_loss": card.get("heldout_loss"),
        "corpus_languages": corpus.get("languages"), "script_locales": len(corpus.get("script_locales") or []),
    }
