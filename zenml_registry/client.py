"""The model registry on ZenML's Model Control Plane: register, promote, list, show and pull release packages.

Rules (what may be promoted, what metadata is kept) live in `care.registry.promotion`; this module only talks to
ZenML. Works the same against a local store and a ZenML server (`zenml login ...`): every call goes
through `Client()`. The package files live in the artifact store (`zenml_registry.storage`: stored once by
content, fetched verified); promotions take the model's lock (`zenml_registry.lock`).

Packages. A stored package is registered as a ZenML artifact of type MODEL named ``<model name>-package``
(`register_artifact` with a pre-existing URI: no pickling, no materializer copy). That artifact version is
linked to the model version; a second model version with a byte-identical package reuses the same artifact
version.

Versions. `register_package` never names a version: ZenML numbers them (1, 2, ...). Called inside a
pipeline step whose pipeline (or step) carries ``Model(name=<model name>)``, it uses that run's model
version instead of creating one, so the pipeline's own model version gets the package and metadata.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

from zenml.client import Client  # noqa: E402
from zenml.enums import ArtifactType, ModelStages  # noqa: E402

from care.errors import CareError, UsageError  # noqa: E402
from care.release.manifest import read_manifest  # noqa: E402
from care.registry.promotion import (  # noqa: E402
    STAGES, Decision, decide_promotion, key_metrics, registry_metadata, several_holders_message)
from zenml_registry.lock import promotion_lock  # noqa: E402
from zenml_registry.storage import check_store, ensure_source_root, fetch_package, store_package  # noqa: E402

# the registry's API for the CLI and the pipelines (check_store: their preflight of the store)
__all__ = ["check_store", "list_versions", "promote", "promote_on_pass", "pull_package", "register_package",
           "retract_version", "show_version", "version_metadata"]


def package_artifact_name(model_name: str) -> str:
    return f"{model_name}-package"


# -------------------------------------------------------------------------------------- model versions


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


# ----------------------------------------------------------------------------------------- register


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
        ensure_source_root()
        from zenml.artifacts.utils import load_artifact_store

        load_artifact_store(av.artifact_store_id)
    uri = av.uri
    expected_sha = version_metadata(mv).get("package_sha256") or posixpath.basename(uri.rstrip("/"))
    fetch_package(uri, expected_sha, out, f"version {mv.number}", trusted_key)
    return {"model": model_name, "version": mv.number, "out": str(out), "package_sha256": expected_sha}
