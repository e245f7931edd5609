"""Release manifests: sha256 and size of every file in a package, and their verification.

`manifest.json` lists every file of the package except itself. A package is accepted only when the set
of files on disk equals the set listed and every size and sha256 matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from care.errors import CareError, label
from care.fsutil import atomic_write_json

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_SHOWN = 20  # problems named in the refusal message


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def package_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every regular file under `root` except the manifest, sorted."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise CareError(f"{p}: symbolic links are not allowed in a package")
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST:
            out.append(p.relative_to(root).as_posix())
    return out


def write_manifest(root: str | Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `root` and write `root/manifest.json` = metadata + {"files": {...}}."""
    root = Path(root)
    files = {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in package_files(root)}
    manifest = {**metadata, "files": files}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise CareError(f"{path}: no manifest; not a release package")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: also numbers over the digit limit
        raise CareError(f"{path}: manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CareError(f"{path}: manifest has no 'files' mapping")
    return manifest


def verify_package(root: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raise CareError naming each mismatch. Returns the manifest."""
    root = Path(root)
    if not root.is_dir():
        raise CareError(f"{root}: no such package directory")
    manifest = read_manifest(root)
    listed = manifest["files"]
    present = set(package_files(root))
    problems = [f"{label(rel)}: missing" for rel in sorted(set(listed) - present)]
    problems += [f"{label(rel)}: not in the manifest" for rel in sorted(present - set(listed))]
    for rel in sorted(set(listed) & present):
        entry = listed[rel]
        if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
            problems.append(f"{rel}: manifest entry malformed")
        elif (root / rel).stat().st_size != entry["size"]:
            problems.append(f"{rel}: size {(root / rel).stat().st_size} != manifest {label(str(entry['size']), 20)}")
        elif sha256_file(root / rel) != entry["sha256"]:
            problems.append(f"{rel}: sha256 does not match the manifest")
    if problems:
        shown = problems[:_SHOWN] + ([f"and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
        raise CareError(f"{root}: package does not match its manifest ({len(problems)} problem(s)): " + "; ".join(shown))
    return manifest
