"""The content-keyed cache: where built bases and finished fits live, and how their keys are computed.

A key is a digest of everything that determines the artifact: the params sections, the data and fold
membership (given by the caller), and the source of the modules involved. `source_digest` finds those
modules itself: it follows the `care.*` imports of the given modules (at any depth, including imports
inside functions) and hashes every file it reaches, so no list of files is kept by hand.

The cache only saves time. Steps hand models to each other through ZenML's artifact store (see
`steps/materializers.py`); a step with an empty cache gets the same result by rebuilding or downloading.

Several runs may share one cache at once (two `care train` with other outputs, the steps of one run).
An entry is therefore published once: built in a private temporary sibling and renamed into place
(`new_entry`, `publish_file`). When another writer published the same key first, its entry is kept and
ours discarded: an entry is never replaced or deleted, so a reader holding it is never disturbed. The
cache may be deleted as a whole while no run is going.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from care.errors import CareError
from care.fsutil import cannot_write, staged_dir, write_then_place

_PACKAGE = "care"


def cache_root() -> Path:
    """`$CARE_CACHE_DIR`, else `.care/cache` under the current directory."""
    return Path(os.environ.get("CARE_CACHE_DIR") or Path.cwd() / ".care" / "cache").resolve()


@contextlib.contextmanager
def new_entry(path: str | Path, complete: Callable[[Path], bool] = os.path.isdir) -> Iterator[Path]:
    """Build the cache entry `path` in a private temporary sibling (0700) and publish it once, by a rename.

    If another writer published `path` first, its entry is kept and ours discarded (same key, same
    content). An incomplete leftover at `path` (`complete(path)` false: left by an older version of this tool
    that wrote entries in place) is moved aside and removed first. An OSError becomes one line naming `path`.
    """
    with staged_dir(path, lambda tmp, target: _publish(tmp, target, complete)) as tmp:
        yield tmp


def _publish(tmp: Path, path: Path, complete: Callable[[Path], bool]) -> None:
    for _ in range(2):
        try:
            os.rename(tmp, path)  # fails on a non-empty directory: never replaces a published entry
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if complete(path):  # another writer published it first: theirs stays, ours goes
            shutil.rmtree(tmp, ignore_errors=True)
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".stale", dir=path.parent))
        os.replace(path, stale / "entry")  # an incomplete leftover: nobody reads it (readers check completeness)
        shutil.rmtree(stale, ignore_errors=True)
    raise OSError(errno.EEXIST, "an incomplete entry keeps reappearing", str(path))


def publish_file(path: str | Path, data: bytes) -> Path:
    """Publish the cache file `path` once: written to a private temporary sibling, fsynced, then hard-linked
    into place; a file another writer published first is kept. (Where hard links are unsupported it is
    renamed over: a reader that opened the old file keeps reading it whole.)"""
    try:
        return write_then_place(path, data, _link_once)
    except OSError as exc:
        raise cannot_write(path, exc) from None


def _link_once(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another writer published it first: theirs stays
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.replace(tmp, path)


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _package_root() -> Path:
    import care

    return Path(care.__file__).resolve().parent


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    closure = set()
    for name in names:
        if name == _PACKAGE or name.startswith(_PACKAGE + "."):
            parts = name.split(".")
            closure.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return closure


@lru_cache(maxsize=None)
def _closure(modules: tuple[str, ...], root: Path) -> tuple[tuple[str, str], ...]:
    seen: dict[str, str] = {}
    stack = list(modules)
    for name in modules:
        parts = name.split(".")
        stack += [".".join(parts[:i]) for i in range(1, len(parts))]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            if name in modules:
                raise CareError(f"source_digest: module {name} not found under {root}")
            continue  # `from care.x import function`: the name is not a module
        source = path.read_bytes()
        seen[name] = hashlib.sha256(source).hexdigest()
        stack.extend(_imported(ast.parse(source), name, path.name == "__init__.py") - seen.keys())
    return tuple(sorted(seen.items()))


def source_modules(*modules: str) -> list[str]:
    """The `care` modules that `modules` import, directly or not (package `__init__`s included)."""
    return [name for name, _ in _closure(tuple(sorted(modules)), _package_root())]


def source_digest(*modules: str) -> str:
    """sha256 over the source of `modules` and every `care` module they import, directly or not."""
    return digest(_closure(tuple(sorted(modules)), _package_root()))
