"""Where a run's data and code came from, as the release manifest, the model card and the registry record it.

The data's version is the content's own hash, never a claim read from a file alone: the DVC md5 that the
`.dvc` file tracking the data records is used only when the md5 recomputed from the bytes the run
validated (and, for a tracked directory, from every other file in it, DVC's way) equals it. Otherwise (an
edit without `dvc add`, an interrupted `care annotations add`: new bytes, old `.dvc` file) the version is
`sha256:<the validated bytes' sha256>` and the run is marked `data_dirty`, as the code commit is marked
`-dirty`. Data no `.dvc` file tracks is versioned by its sha256 and is neither clean nor dirty.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from care.errors import CareError
from care.safe_yaml import load_yaml_file

_CHUNK = 1 << 20


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tracking(data_path: Path) -> tuple[Path, dict] | None:
    """The `.dvc` file whose out is `data_path` or a directory above it, and that out (None when untracked)."""
    data_path = data_path.absolute()
    for target in [data_path, *data_path.parents]:
        dvc_file = target.parent / f"{target.name}.dvc"
        if dvc_file.is_file():
            try:
                outs = (load_yaml_file(dvc_file, "DVC file") or {}).get("outs") or []
            except CareError:  # unreadable or not YAML: it records nothing that can match
                outs = []
            for out in outs if isinstance(outs, list) else []:
                if isinstance(out, dict) and (dvc_file.parent / str(out.get("path", ""))).absolute() == target:
                    return dvc_file, out
        if (target / ".dvc").is_dir():  # the repository root: nothing above it tracks the data
            return None
    return None


def _dir_md5(directory: Path, data_path: Path, data_md5: str) -> str:
    """DVC's md5 of a tracked directory: the md5 of its sorted [{"md5", "relpath"}] listing, plus ".dir".
    The data file counts with the md5 of the bytes the run validated, never a second read."""
    entries = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in (".git", ".hg", ".dvc"))
        for name in files:
            path = Path(root) / name
            md5 = data_md5 if path.absolute() == data_path else _md5_file(path)
            entries.append({"md5": md5, "relpath": path.relative_to(directory).as_posix()})
    listing = json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True)
    return hashlib.md5(listing.encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"


def file_digests(path: str | Path, sha256: str) -> str:
    """The md5 of `path`'s bytes (DVC's hash), read as a stream; the bytes must still be the validated ones
    (`sha256`), or the run refuses them."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    if sha.hexdigest() != sha256:
        raise CareError(f"{path}: changed since it was validated (sha256 differs); rerun")
    return md5.hexdigest()


def data_provenance(data_path: str | Path, sha256: str, md5: str) -> dict:
    """{"version", "dirty", "dvc_md5"} of the data file `data_path` whose validated bytes hash to `sha256` and
    `md5`.

    `version` is DVC's md5 when the bytes are what the tracking `.dvc` file records, else `sha256:<sha256>`;
    `dirty` is True when a `.dvc` file tracks the data and the bytes differ from it, False when they match,
    None when nothing tracks it; `dvc_md5` is what the `.dvc` file records (None when untracked)."""
    data_path = Path(data_path).absolute()
    own = f"sha256:{sha256}"
    tracked = _tracking(data_path)
    if tracked is None:
        return {"version": own, "dirty": None, "dvc_md5": None}
    dvc_file, out = tracked
    recorded = str(out.get("md5") or "") or None
    target = (dvc_file.parent / str(out.get("path", ""))).absolute()
    try:
        actual = _dir_md5(target, data_path, md5) if target != data_path else md5
    except OSError:
        actual = None  # another file of the tracked directory cannot be read: not shown to match
    if recorded is not None and actual == recorded:
        return {"version": recorded, "dirty": False, "dvc_md5": recorded}
    return {"version": own, "dirty": True, "dvc_md5": recorded}


def git_commit() -> str | None:
    """HEAD's commit, with `-dirty` when tracked files differ from it; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
