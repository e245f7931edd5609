"""Release packages in the active ZenML artifact store: stored once by content, fetched verified.

Storage. A release package is stored once, as plain files, under
``<artifact store>/care-packages/<sha256 of manifest.json>/`` (content-addressed: a package already there
is not copied again); the manifest is copied last, so its presence marks a complete copy (object stores
have no rename). Every path is reached with `zenml.io.fileio`, so a local store and a remote one work alike.

Fetch. The stored manifest must hash to the registered sha256 and the stored folder must hold exactly the
files it lists (an extra file is refused, as in `care.release.manifest.verify_package`). Files are copied with
fileio into a temporary directory beside the target, every sha256 in the manifest is checked
(`care.release.manifest.verify_package`) and the directory is renamed into place only when all match;
`load_artifact` is never used (it leaves /tmp/zenml-* folders behind).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from pathlib import Path, PurePosixPath

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

from zenml.client import Client  # noqa: E402
from zenml.io import fileio  # noqa: E402

from care.errors import CareError, label  # noqa: E402
from care.fsutil import atomic_dir  # noqa: E402
from care.release.manifest import MANIFEST, SIGNATURE, verify_package  # noqa: E402

PACKAGES_DIR = "care-packages"
SETUP_WAIT_S = 60.0  # how long a first use of a fresh local store waits for another process setting it up


def _manifest_sha256(package_dir: Path) -> str:
    return hashlib.sha256((package_dir / MANIFEST).read_bytes()).hexdigest()


def _safe_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) or "\\" in rel:
        raise CareError(f"manifest lists an unsafe path {rel!r}")
    return p.as_posix()


def ensure_source_root() -> None:
    """Let ZenML load the active stack's components however `care` was started.

    ZenML resolves stack components through its source root: a `zenml init` repository, else the directory
    of `__main__`'s file. Without either (`python -c`, a notebook, an embedded interpreter) reaching the
    artifact store raises RuntimeError; the project root is used then (and only then).
    """
    from zenml.utils import source_utils

    try:
        source_utils.get_source_root()
    except RuntimeError:
        source_utils.set_custom_source_root(str(Path(__file__).resolve().parents[1]))


def _join(uri: str, rel: str) -> str:
    return posixpath.join(uri, rel) if "://" in uri else os.path.join(uri, *rel.split("/"))


def _stored_files(uri: str) -> set[str]:
    """Relative POSIX paths of every file under the stored package at `uri` (local or remote store)."""
    root = uri.rstrip("/")
    out: set[str] = set()
    for dirpath, _dirs, files in fileio.walk(uri):
        dirpath = str(dirpath).rstrip("/")
        if not dirpath.startswith(root):
            raise CareError(f"cannot list the stored package at {uri} (walk returned {dirpath})")
        sub = dirpath[len(root):].replace("\\", "/").strip("/")
        out.update(f"{sub}/{name}" if sub else str(name) for name in files)
    return out


def _copy_to_store(src: Path, dst: str) -> None:
    parent = posixpath.dirname(dst) if "://" in dst else os.path.dirname(dst)
    if parent and not fileio.exists(parent):
        fileio.makedirs(parent)
    fileio.copy(str(src), dst, overwrite=True)


def check_store() -> None:
    """Refuse, before any work, a ZenML store that does not answer or a local artifact store that cannot be
    written (one line). The first use of a fresh local store creates its database: processes starting together
    (two `care train`) take turns through a lock file in ZenML's config directory, or ZenML's own set-up fails."""
    from zenml.utils.io_utils import get_global_config_directory

    from care.fsutil import check_writable, file_lock

    lock = Path(get_global_config_directory()) / ".care-store-setup.lock"
    with file_lock(lock, "care (ZenML store set-up)", exclusive=True, wait_s=SETUP_WAIT_S,
                   refusal=lambda holder: f"the ZenML store is being set up by {holder}; try again"):
        try:
            client = Client()
            client.active_stack_model  # a round trip to the store
            ensure_source_root()
            store = client.active_stack.artifact_store.path
        except Exception as exc:  # noqa: BLE001 - any failure here means the store cannot be used
            raise CareError(f"the ZenML store cannot be reached or opened ({type(exc).__name__}); nothing started: "
                            "check `zenml status`, ZENML_STORE_URL and ZENML_CONFIG_PATH") from None
    if "://" not in store:
        check_writable(Path(store) / PACKAGES_DIR)


def store_package(package_dir: str | Path) -> tuple[str, str]:
    """Copy a verified package into the active artifact store once; return (uri, manifest sha256)."""
    package_dir = Path(package_dir)
    manifest = verify_package(package_dir)
    sha = _manifest_sha256(package_dir)
    ensure_source_root()
    store = Client().active_stack.artifact_store
    uri = _join(store.path, f"{PACKAGES_DIR}/{sha}")
    marker = _join(uri, MANIFEST)
    signed = (package_dir / SIGNATURE).is_file()
    if fileio.exists(marker):
        with fileio.open(marker, "rb") as fh:
            if hashlib.sha256(fh.read()).hexdigest() == sha:
                if signed and not fileio.exists(_join(uri, SIGNATURE)):  # stored unsigned before: add the signature
                    _copy_to_store(package_dir / SIGNATURE, _join(uri, SIGNATURE))
                return uri, sha  # already stored: nothing is copied again
    # Manifest last: its presence marks a complete copy (works on object stores without rename).
    for rel in sorted(manifest["files"]):
        _copy_to_store(package_dir / _safe_rel(rel), _join(uri, rel))
    if signed:
        _copy_to_store(package_dir / SIGNATURE, _join(uri, SIGNATURE))
    _copy_to_store(package_dir / MANIFEST, marker)
    return uri, sha


def _refuse_odd(src: str, rel: str, where: str) -> None:
    """On a local artifact store, refuse a stored entry that is not a regular file (a FIFO would block the copy)."""
    if "://" not in src and not stat.S_ISREG(os.lstat(src).st_mode):
        raise CareError(f"{where}: {label(rel)} in the stored package is not a regular file")


def fetch_package(uri: str, expected_sha: str, out: Path, where: str,
                  trusted_key: str | Path | None = None) -> None:
    """Copy the stored package at `uri` to `out` (an empty or absent directory), verified against `expected_sha`
    (the registered sha256 of its manifest) and, with `trusted_key`, against its signature; nothing is left at
    `out` (or beside it) on failure. `where` names the package in messages (e.g. "version 3")."""
    created_out = not out.exists()
    try:
        with atomic_dir(out) as tmp:
            marker = _join(uri, MANIFEST)
            if not fileio.exists(marker):
                raise CareError(f"{where}: {MANIFEST} missing from the stored package")
            _refuse_odd(marker, MANIFEST, where)
            fileio.copy(marker, str(tmp / MANIFEST), overwrite=True)
            if hashlib.sha256((tmp / MANIFEST).read_bytes()).hexdigest() != expected_sha:
                raise CareError(f"{where}: stored {MANIFEST} does not match the registered sha256")
            manifest_bytes = (tmp / MANIFEST).read_bytes()
            manifest = json.loads(manifest_bytes.decode("utf-8"))
            stored = _stored_files(uri)
            if SIGNATURE in stored:
                _refuse_odd(_join(uri, SIGNATURE), SIGNATURE, where)
                fileio.copy(_join(uri, SIGNATURE), str(tmp / SIGNATURE), overwrite=True)
            if trusted_key is not None:
                from care.release.signing import verify_signature

                signature = (tmp / SIGNATURE).read_bytes() if (tmp / SIGNATURE).is_file() else None
                verify_signature(manifest_bytes, signature, trusted_key, where)
            extra = sorted(stored - set(manifest.get("files", {})) - {MANIFEST, SIGNATURE})
            if extra:  # the same rule as care.release.manifest.verify_package: exactly the listed files, no more
                raise CareError(f"{where}: {len(extra)} file(s) in the stored package are not in its "
                                f"manifest: " + ", ".join(label(rel) for rel in extra[:20]))
            missing = []
            for rel in sorted(manifest.get("files", {})):
                src = _join(uri, _safe_rel(rel))
                if not fileio.exists(src):
                    missing.append(rel)
                    continue
                _refuse_odd(src, rel, where)
                dst = tmp.joinpath(*rel.split("/"))
                dst.parent.mkdir(parents=True, exist_ok=True)
                fileio.copy(src, str(dst), overwrite=True)
            if missing:
                raise CareError(f"{where}: {len(missing)} file(s) missing from the stored package: "
                                + ", ".join(missing))
            verify_package(tmp)
    except BaseException:
        if created_out and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
