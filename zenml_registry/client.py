"""The model registry on ZenML's Model Control Plane: register, promote, list, show and pull release packages.

Rules (what may be promoted, what metadata is kept) live in `care.registry.promotion`; this module only talks to
ZenML. Works the same against a local store and a ZenML server (`zenml login ...`): every call goes
through `Client()` and the artifact store is reached with `zenml.io.fileio`.

Storage. A release package is stored once, as plain files, in the active artifact store under
``<artifact store>/care-packages/<sha256 of manifest.json>/`` (content-addressed: a package already there
is not copied again) and registered as a ZenML artifact of type MODEL named ``<model name>-package``
(`register_artifact` with a pre-existing URI: no pickling, no materializer copy). That artifact version is
linked to the model version; a second model version with a byte-identical package reuses the same artifact
version.

Versions. `register_package` never names a version: ZenML numbers them (1, 2, ...). Called inside a
pipeline step whose pipeline (or step) carries ``Model(name=<model name>)``, it uses that run's model
version instead of creating one, so the pipeline's own model version gets the package and metadata.

Pull. The stored manifest must hash to the registered sha256 and the stored folder must hold exactly the
files it lists (an extra file is refused, as in `care.release.manifest.verify_package`). Files are copied with
fileio into a temporary directory beside the target, every sha256 in the manifest is checked
(`care.release.manifest.verify_package`) and the directory is renamed into place only when all match;
`load_artifact` is never used (it leaves /tmp/zenml-* folders behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import random
import stat
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

from zenml.client import Client  # noqa: E402
from zenml.enums import ArtifactType, ModelStages  # noqa: E402
from zenml.io import fileio  # noqa: E402

from care.errors import CareError, UsageError, label  # noqa: E402
from care.fsutil import atomic_dir  # noqa: E402
from care.release.manifest import MANIFEST, SIGNATURE, read_manifest, verify_package  # noqa: E402
from care.registry.promotion import (  # noqa: E402
    STAGES, Decision, decide_promotion, key_metrics, registry_metadata, several_holders_message)

PACKAGES_DIR = "care-packages"
_COPY_CHUNK = 1 << 22
LOCK_WAIT_S = 60.0  # how long a promotion waits for another one to finish
LOCK_STALE_S = 300.0  # a promotion lock older than this was left by a crashed promotion and is taken over


def package_artifact_name(model_name: str) -> str:
    return f"{model_name}-package"


# ------------------------------------------------------------------------------------------ helpers


def _manifest_sha256(package_dir: Path) -> str:
    return hashlib.sha256((package_dir / MANIFEST).read_bytes()).hexdigest()


def _safe_rel(rel: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) or "\\" in rel:
        raise CareError(f"manifest lists an unsafe path {rel!r}")
    return p.as_posix()


def _ensure_source_root() -> None:
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


def _get_model(client: Client, model_name: str, create: bool = False):
    try:
        return client.get_model(model_name)
    except KeyError:
        if not create:
            raise CareError(f"no model named {model_name!r} in the registry yet: `care train` registers one when "
                            "its gate passes (registry.model_name in params.yaml); name another with --model-name") from None
        return client.create_model(
            name=model_name,
            description="CARE: predicts the client's working-alliance ratings of a counseling session.",
        )


def _resolve_version(client: Client, model_name: str, version: str | int | None = None, stage: str | None = None):
    """A model version by number (or name), or by stage; CareError when there is none."""
    if (version is None) == (stage is None):
        raise UsageError("give exactly one of a version or a stage")
    _get_model(client, model_name)
    if stage is not None:
        if stage not in STAGES:
            raise UsageError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if stage == "archived":
            raise UsageError("several versions can be archived: name the version instead")
        holders = _holders(client, model_name, stage)  # listed, never ZenML's by-stage lookup (it fails on two)
        if len(holders) > 1:
            raise _several(model_name, stage, holders)
        if not holders:
            raise CareError(f"model {model_name!r} has no stage {stage}")
        return client.get_model_version(model_name, holders[0].id)
    key = int(version) if str(version).isdigit() else str(version)
    try:
        return client.get_model_version(model_name, key)
    except KeyError:
        raise CareError(f"model {model_name!r} has no version {version}") from None


def _context_model_version(model_name: str):
    """The model version of the running pipeline step, or None outside a step / without a Model."""
    from zenml.exceptions import StepContextError
    from zenml.steps.step_context import get_step_context

    try:
        ctx = get_step_context()
    except (StepContextError, RuntimeError):
        return None
    mv = ctx.model_version
    if mv is None:
        return None
    if mv.model.name != model_name:
        raise CareError(f"this pipeline run carries model {mv.model.name!r}, but the package is to be "
                        f"registered as {model_name!r}; make registry.model_name and the pipeline's Model agree")
    return mv


def _version_label(mv) -> str:
    return str(mv.number)


def check_store() -> None:
    """Refuse, before any work, a ZenML store that does not answer or a local artifact store that cannot be
    written (one line). The first use of a fresh local store creates its database: processes starting together
    (two `care train`) take turns through a lock file in ZenML's config directory, or ZenML's own set-up fails."""
    from zenml.utils.io_utils import get_global_config_directory

    from care.fsutil import check_writable, file_lock

    lock = Path(get_global_config_directory()) / ".care-store-setup.lock"
    with file_lock(lock, "care (ZenML store set-up)", exclusive=True, wait_s=LOCK_WAIT_S,
                   refusal=lambda holder: f"the ZenML store is being set up by {holder}; try again"):
        try:
            client = Client()
            client.active_stack_model  # a round trip to the store
            _ensure_source_root()
            store = client.active_stack.artifact_store.path
        except Exception as exc:  # noqa: BLE001 - any failure here means the store cannot be used
            raise CareError(f"the ZenML store cannot be reached or opened ({type(exc).__name__}); nothing started: "
                            "check `zenml status`, ZENML_STORE_URL and ZENML_CONFIG_PATH") from None
    if "://" not in store:
        check_writable(Path(store) / PACKAGES_DIR)


# ----------------------------------------------------------------------------------------- register


def store_package(package_dir: str | Path) -> tuple[str, str]:
    """Copy a verified package into the active artifact store once; return (uri, manifest sha256)."""
    package_dir = Path(package_dir)
    manifest = verify_package(package_dir)
    sha = _manifest_sha256(package_dir)
    _ensure_source_root()
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


def _package_artifact(uri: str, model_name: str, metadata: dict[str, Any]):
    """The artifact version for `uri`: the existing one, or a new MODEL artifact registered in place."""
    from zenml import register_artifact

    client = Client()
    existing = client.list_artifact_versions(uri=uri, size=1)
    if existing.items:
        return existing.items[0]
    try:
        return register_artifact(
            folder_or_file_uri=uri,
            name=package_artifact_name(model_name),
            artifact_type=ArtifactType.MODEL,
            artifact_metadata=metadata,
        )
    except RuntimeError:  # registered by a concurrent run between the lookup and now
        existing = client.list_artifact_versions(uri=uri, size=1)
        if existing.items:
            return existing.items[0]
        raise


def register_package(package_dir: str | Path, model_name: str,
                     metadata: dict[str, Any] | None = None) -> int:
    """Register a release package as a model version; return the version number.

    Outside a pipeline step a new version of `model_name` is created (ZenML numbers it). Inside a step of a
    pipeline configured with ``Model(name=model_name)`` the run's own model version is used. `metadata`
    (optional) is merged over the manifest's metadata; only numbers and ids are kept.
    """
    package_dir = Path(package_dir)
    manifest = read_manifest(package_dir)
    meta = registry_metadata(manifest, metadata)
    uri, sha = store_package(package_dir)
    n_bytes = sum(int(e.get("size", 0)) for e in manifest["files"].values() if isinstance(e, dict))
    meta.update({"package_sha256": sha, "package_files": len(manifest["files"]), "package_bytes": n_bytes})

    client = Client()
    _get_model(client, model_name, create=True)
    mv = _context_model_version(model_name)
    if mv is None:
        mv = client.create_model_version(model_name_or_id=model_name)  # unnamed: ZenML numbers it

    artifact = _package_artifact(uri, model_name, {"package_sha256": sha, "package_bytes": n_bytes})
    from zenml.model.utils import link_artifact_version_to_model_version

    link_artifact_version_to_model_version(artifact_version=artifact, model_version=mv)
    meta["package_artifact_version_id"] = str(artifact.id)
    client.create_run_metadata(metadata=meta, resources=[_mv_resource(mv.id)])
    return int(mv.number)


def _mv_resource(mv_id):
    from zenml.enums import MetadataResourceTypes
    from zenml.models import RunMetadataResource

    return RunMetadataResource(id=mv_id, type=MetadataResourceTypes.MODEL_VERSION)


# ------------------------------------------------------------------------------------------ promote


def version_metadata(mv) -> dict[str, Any]:
    """The registry metadata of a model version (numbers and ids only)."""
    return dict(mv.run_metadata or {})  # hydrates the response when needed


def _holders(client: Client, model_name: str, stage: str) -> list:
    """Every version in `stage` (more than one only in a store damaged by a race or by another tool)."""
    return list(client.list_model_versions(model=model_name, stage=stage, size=50).items)


def _several(model_name: str, stage: str, holders: list) -> CareError:
    return CareError(several_holders_message(model_name, stage, sorted(int(h.number) for h in holders)))


def _age_s(created: datetime | None) -> float:
    if created is None:
        return 0.0
    if created.tzinfo is None:  # ZenML stores UTC without a zone
        created = created.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - created).total_seconds()


def _lock_name(model_name: str) -> str:
    return f"care-promotion-lock-{hashlib.sha256(model_name.encode()).hexdigest()[:32]}"


@contextlib.contextmanager
def promotion_lock(client: Client, model_name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the registry's promotion lock of `model_name` (waiting up to `wait_s` seconds for another holder).

    The lock is a ZenML tag with a name unique to the model: creating it is an atomic compare-and-set in the
    store's database (a unique constraint), so it works the same on a local store and on a ZenML server. It is
    deleted by its id on exit; one older than LOCK_STALE_S (a crashed promotion) is deleted by id and retaken.
    """
    from zenml.exceptions import EntityExistsError

    name = _lock_name(model_name)
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        try:
            lock = client.create_tag(name=name)
            break
        except EntityExistsError:
            try:
                held = client.get_tag(name, allow_name_prefix_match=False)
            except KeyError:  # released between the two calls
                continue
            age = _age_s(held.created)
            if age > LOCK_STALE_S:
                with contextlib.suppress(KeyError):
                    client.delete_tag(held.id)  # by id: a lock retaken meanwhile is never deleted
                continue
            if time.monotonic() >= deadline:
                raise CareError(f"model {model_name!r}: another promotion holds the registry's promotion lock (taken "
                                f"{age:.0f} s ago) and did not finish within {wait_s:.0f} s; nothing changed. Try again; "
                                f"a lock left by a crashed promotion is taken over {LOCK_STALE_S:.0f} s after it was "
                                "taken") from None
            time.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        with contextlib.suppress(KeyError):
            client.delete_tag(lock.id)


def _stage_of(mv) -> str | None:
    stage = mv.stage.value if hasattr(mv.stage, "value") else mv.stage
    return None if stage in (None, "none") else str(stage)


def _set_stage(client: Client, mv, stage: str | None) -> None:
    client.update_model_version(model_name_or_id=mv.model.id, version_name_or_id=mv.id,
                                 stage=ModelStages(stage or "none"), force=True)


def promote(version: str | int, stage: str, model_name: str, force: bool = False) -> Decision:
    """Move a version to `stage` when the rules in care.registry.promotion allow; raise CareError otherwise.

    Check and move happen under the model's promotion lock (`promotion_lock`), so two promotions started
    together are decided one after the other, each against the holder the other left. After the move the
    stage must hold exactly this version; if a writer that ignores the lock changed it meanwhile, the move is
    rolled back and refused. A store that already has several holders of the stage is refused unless
    `force`, which keeps this version and archives the others (the repair). The refusal's Decision (with the
    comparison table) is attached to the error as `.decision`.
    """
    client = Client()
    _resolve_version(client, model_name, version=version)
    with promotion_lock(client, model_name):
        mv = _resolve_version(client, model_name, version=version)  # fresh: another promotion may have moved it
        before = _stage_of(mv)
        holders = _holders(client, model_name, stage) if stage in ("staging", "production") else []
        others = [h for h in holders if h.id != mv.id]
        if len(holders) > 1 and not force:
            raise _several(model_name, stage, holders)
        if not others and holders:
            return Decision(True, f"version {mv.number} already holds {stage}")
        current = others[0] if len(others) == 1 else None
        decision = decide_promotion(
            version_metadata(mv), stage, version_metadata(current) if current is not None else None, force=force,
            candidate_label=_version_label(mv), current_label=_version_label(current) if current is not None else None)
        if not decision.allowed:
            err = CareError(decision.reason)
            err.decision = decision  # type: ignore[attr-defined]
            raise err
        _set_stage(client, mv, stage)  # ZenML archives one earlier holder in the same transaction
        if len(others) > 1:  # the repair of a store with several holders: archive the rest
            for h in _holders(client, model_name, stage):
                if h.id != mv.id and h.id in {o.id for o in others}:
                    _set_stage(client, h, "archived")
            decision = Decision(True, f"version {mv.number} now holds {stage} alone; archived versions "
                                      f"{', '.join(str(o.number) for o in others)} (--force repair)", forced=True)
        if stage in ("staging", "production"):
            after = _holders(client, model_name, stage)
            if [h.id for h in after] != [mv.id]:  # changed by a writer outside the lock: undo ours
                _set_stage(client, mv, before)
                if current is not None and not _holders(client, model_name, stage):
                    _set_stage(client, current, stage)
                raise CareError(f"model {model_name!r}: {stage} changed during this promotion by a writer that does "
                                f"not take care's promotion lock; version {mv.number} was moved back to "
                                f"{before or 'no stage'}; check `care models list`")
    return decision


def retract_version(version: str | int, model_name: str) -> bool:
    """Delete a registered version that holds no stage (its release could not be installed): the registry then
    holds only versions whose release is where the run said. Returns False (and keeps it) when it holds a stage
    or is gone already; its package stays in the artifact store (shared by content, maybe with other versions)."""
    client = Client()
    try:
        mv = _resolve_version(client, model_name, version=version)
    except CareError:
        return False
    if _stage_of(mv) not in (None, "archived"):
        return False
    client.delete_model_version(mv.id)
    return True


def promote_on_pass(version: str | int, model_name: str, stage: str) -> str | None:
    """Move a version whose gate passed to `stage` (default staging); return the stage, or None when not moved."""
    if stage == "none":
        return None
    client = Client()
    mv = _resolve_version(client, model_name, version=version)
    if version_metadata(mv).get("gate_passed") is not True:
        return None
    promote(mv.number, stage, model_name)
    return stage


# ----------------------------------------------------------------------------------------- find/pull


def _summary(mv) -> dict[str, Any]:
    meta = version_metadata(mv)
    return {
        "version": mv.number,
        "stage": (mv.stage.value if hasattr(mv.stage, "value") else mv.stage) if mv.stage else None,
        "created": mv.created.isoformat(timespec="seconds") if mv.created else None,
        "gate_passed": meta.get("gate_passed"),
        "key_metrics": key_metrics(meta),
        "data_version": meta.get("data_version"),
        "data_dirty": meta.get("data_dirty"),
        "package_sha256": meta.get("package_sha256"),
    }


def list_versions(model_name: str) -> list[dict[str, Any]]:
    client = Client()
    _get_model(client, model_name)
    out, page = [], 1
    while True:
        p = client.list_model_versions(model=model_name, sort_by="asc:number", page=page, size=100, hydrate=True)
        out += [_summary(mv) for mv in p.items]
        if page >= p.total_pages:
            return out
        page += 1


def show_version(model_name: str, version: str | int | None = None,
                 stage: str | None = None) -> dict[str, Any]:
    client = Client()
    mv = _resolve_version(client, model_name, version=version, stage=stage)
    s = _summary(mv)
    return {"model": model_name, "version": s["version"], "stage": s["stage"], "created": s["created"],
            "id": str(mv.id), "metadata": version_metadata(mv)}


def _package_location(client: Client, mv, model_name: str):
    links = client.list_model_version_artifact_links(
        model_version_id=mv.id, only_model_artifacts=True, artifact_name=package_artifact_name(model_name),
        sort_by="desc:created", size=1)
    if not links.items:
        raise CareError(f"version {mv.number} of {model_name!r} has no release package")
    av = client.get_artifact_version(links.items[0].artifact_version.id)
    return av


def _refuse_odd(src: str, rel: str, number) -> None:
    """On a local artifact store, refuse a stored entry that is not a regular file (a FIFO would block the copy)."""
    if "://" not in src and not stat.S_ISREG(os.lstat(src).st_mode):
        raise CareError(f"version {number}: {label(rel)} in the stored package is not a regular file")


def pull_package(out: str | Path, model_name: str, version: str | int | None = None,
                 stage: str | None = None, trusted_key: str | Path | None = None) -> dict[str, Any]:
    """Copy a version's package to `out`, verified; nothing is left at `out` (or beside it) on failure.

    With `trusted_key` (a PEM public key) the stored package must carry a signature of its manifest by that key
    (`care.release.signing`), checked on the manifest bytes that were checked against the registry."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CareError(f"{out}: already exists and is not an empty directory")
    client = Client()
    mv = _resolve_version(client, model_name, version=version, stage=stage)
    av = _package_location(client, mv, model_name)
    if av.artifact_store_id:  # instantiating the store registers its filesystem for fileio
        _ensure_source_root()
        from zenml.artifacts.utils import load_artifact_store

        load_artifact_store(av.artifact_store_id)
    uri = av.uri
    expected_sha = version_metadata(mv).get("package_sha256") or posixpath.basename(uri.rstrip("/"))
    created_out = not out.exists()
    try:
        with atomic_dir(out) as tmp:
            marker = _join(uri, MANIFEST)
            if not fileio.exists(marker):
                raise CareError(f"version {mv.number}: {MANIFEST} missing from the stored package")
            _refuse_odd(marker, MANIFEST, mv.number)
            fileio.copy(marker, str(tmp / MANIFEST), overwrite=True)
            if hashlib.sha256((tmp / MANIFEST).read_bytes()).hexdigest() != expected_sha:
                raise CareError(f"version {mv.number}: stored {MANIFEST} does not match the registered sha256")
            manifest_bytes = (tmp / MANIFEST).read_bytes()
            manifest = json.loads(manifest_bytes.decode("utf-8"))
            stored = _stored_files(uri)
            if SIGNATURE in stored:
                _refuse_odd(_join(uri, SIGNATURE), SIGNATURE, mv.number)
                fileio.copy(_join(uri, SIGNATURE), str(tmp / SIGNATURE), overwrite=True)
            if trusted_key is not None:
                from care.release.signing import verify_signature

                signature = (tmp / SIGNATURE).read_bytes() if (tmp / SIGNATURE).is_file() else None
                verify_signature(manifest_bytes, signature, trusted_key, f"version {mv.number}")
            extra = sorted(stored - set(manifest.get("files", {})) - {MANIFEST, SIGNATURE})
            if extra:  # the same rule as care.release.manifest.verify_package: exactly the listed files, no more
                raise CareError(f"version {mv.number}: {len(extra)} file(s) in the stored package are not in its "
                                f"manifest: " + ", ".join(label(rel) for rel in extra[:20]))
            missing = []
            for rel in sorted(manifest.get("files", {})):
                src = _join(uri, _safe_rel(rel))
                if not fileio.exists(src):
                    missing.append(rel)
                    continue
                _refuse_odd(src, rel, mv.number)
                dst = tmp.joinpath(*rel.split("/"))
                dst.parent.mkdir(parents=True, exist_ok=True)
                fileio.copy(src, str(dst), overwrite=True)
            if missing:
                raise CareError(f"version {mv.number}: {len(missing)} file(s) missing from the stored package: "
                                + ", ".join(missing))
            verify_package(tmp)
    except BaseException:
        if created_out and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    return {"model": model_name, "version": mv.number, "out": str(out), "package_sha256": expected_sha}
