"""The ZenML materializer that moves model directories between steps through the artifact store.

A `care.run.artifacts.ModelDir` is saved as its files (safetensors, ONNX, tokenizer, JSON: never a
pickle) under the artifact's URI plus `model_dir.json` (its key and file list). Loading copies the files
into a local directory first: under `.care/cache/artifacts/` keyed by the artifact URI (artifacts are
immutable, so a second load reuses the copy; the copy is published once, `care.cache.new_entry`), or, when `CARE_STEP_SCRATCH` is set, into a fresh directory
there (each step as its own pod would see it). A ModelDir that does not travel (a real preset's hub id or
local path) stores only its reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from care.cache import cache_root, new_entry
from care.errors import CareError
from care.run.artifacts import ModelDir

INDEX = "model_dir.json"
FILES = "files"
SCRATCH_ENV = "CARE_STEP_SCRATCH"


def _local_files(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or (not path.is_file() and not path.is_dir()):
            raise CareError(f"{root}: {path.relative_to(root)} is not a regular file or directory")
        if path.is_file():
            out.append(path.relative_to(root).as_posix())
    return out


def _copy(src, dst) -> None:
    with fileio.open(src, "rb") as fin, fileio.open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def local_copy_dir(uri: str) -> Path:
    """Where a loaded artifact's files go on this machine (see the module docstring)."""
    scratch = os.environ.get(SCRATCH_ENV)
    if scratch:
        return Path(tempfile.mkdtemp(prefix="artifact-", dir=scratch)) / "model"
    return cache_root() / "artifacts" / hashlib.sha256(uri.encode()).hexdigest()[:24]


class ModelDirMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ModelDir,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data: ModelDir) -> None:
        files = _local_files(Path(data.path)) if data.travels else []
        for rel in files:
            dst = posixpath.join(self.uri, FILES, rel)
            fileio.makedirs(posixpath.dirname(dst))
            _copy(str(Path(data.path) / rel), dst)
        index = {"key": data.key, "travels": data.travels, "files": files,
                 "reference": None if data.travels else data.path}
        with fileio.open(posixpath.join(self.uri, INDEX), "w") as f:
            f.write(json.dumps(index, sort_keys=True))

    def load(self, data_type: type[Any]) -> ModelDir:
        with fileio.open(posixpath.join(self.uri, INDEX), "r") as f:
            index = json.loads(f.read())
        if not index["travels"]:
            return ModelDir(index["reference"], key=index["key"], travels=False)
        target = local_copy_dir(self.uri)
        if not target.is_dir():
            with new_entry(target) as tmp:
                for rel in index["files"]:
                    if rel.startswith("/") or ".." in rel.split("/"):
                        raise CareError(f"artifact {self.uri}: unsafe file name in its index")
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    _copy(posixpath.join(self.uri, FILES, rel), str(tmp / rel))
        return ModelDir(str(target), key=index["key"])
