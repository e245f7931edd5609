"""After the gate: the final fit merged, exported to ONNX, checked for parity and packaged (care.release does each).

The package is a cache entry (`care.cache.new_entry`) keyed by everything it is made of: the final fit, the
base, the release params, the metadata it records (data version, code commit, params, CV and gate), the
signing key and the code that builds it. It is built in a private directory and published once; a run
with the same inputs reuses it, and two runs building it at once never touch each other's files.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from care.cache import cache_root, digest, new_entry, source_digest
from care.model.prompts import PromptConfig
from care.params import Params
from care.release.manifest import MANIFEST, sha256_file
from care.release.package import ScoringConfig
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.run.documents import CvDetail, Gate
from care.run.provenance import git_commit


def prompt_version(instrument) -> str:
    """The prompt format's version: a digest of the code that renders prompts and of the instrument's
    prompt wording (never bumped by hand)."""
    return digest([source_digest("care.model.prompts"), instrument.prompts_digest()])[:12]


def resolved_instrument(instrument, path: Path) -> Path:
    """The instrument as YAML with the prompt wording of each of its languages written in, so a package
    renders the same prompts whatever wording a later version of this tool ships."""
    doc = instrument.model_dump(mode="json")
    doc["prompts"] = {lang: instrument.prompt_texts(lang).model_dump(mode="json") for lang in instrument.languages}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), "utf-8")
    return path


def base_model_id(base: str | None, preset: str) -> str:
    """The base as the registry records it: the preset, a hub id, or `local:<directory name>` for weights on disk
    (a path is not an id, and the registry refuses it)."""
    if not base:
        return preset
    if Path(base).expanduser().exists():
        return f"local:{Path(base).expanduser().resolve().name}"
    return base


def _signer() -> str | None:
    """A digest of the configured signing key (CARE_SIGNING_KEY), so a package signed by another key, or
    unsigned, is another cache entry."""
    from care.release.signing import configured_key

    key = configured_key()
    return hashlib.sha256(key.read_bytes()).hexdigest() if key is not None else None


# what a package records of the cross-validation (besides a summary of its intervals)
_CV_RECORDED = ("mean", "std", "baselines", "n_folds", "n_sessions", "unparsed", "readout", "targets",
                "targets_requested", "score_only_fallback_share", "transcripts", "warnings", "rationale_quality")


def release_metadata(params: Params, data: DataRef, base: ModelDir, instrument, cv: CvDetail, gate: Gate) -> dict:
    """What the package records besides its merge, export and parity results (numbers and ids only)."""
    from care.evaluation.intervals import summary as interval_summary
    from care.model.base_files import base_provenance
    from care.model.presets import hub_revision

    detail = cv.as_json()
    return {
        "data_version": data.version or f"sha256:{data.sha256}",
        # the bytes differ from what the .dvc file tracking them records (care.run.provenance)
        **({"data_dirty": data.dirty, "data_dvc_md5": data.dvc_md5} if data.dirty is not None else {}),
        "data_path": data.path,
        "data_sha256": data.sha256,
        "n_sessions": data.n_sessions,
        "git_commit": git_commit(),
        "params_digest": params.digest(),
        "base_model": base_model_id(params.model.base, params.model.preset),
        "base_revision": hub_revision(params),  # the hub commit trained on (None: the tiny base, weights on disk)
        "base": base_provenance(base.path, base.key),
        "preset": params.model.preset,
        "finetune": params.model.finetune,
        "targets": params.train.targets,
        "instrument": instrument.name,
        "cv": {**{k: detail[k] for k in _CV_RECORDED},
               **({"intervals": interval_summary(detail["intervals"])} if detail["intervals"] else {})},
        "gate": gate.as_json(),
        "scoring": ScoringConfig(**dict(PromptConfig.from_params(params.model)), languages=data.languages,
                                 prompt_version=prompt_version(instrument), readout=params.eval.readout,
                                 grounded_quotes=params.eval.grounded_quotes).model_dump(mode="json"),
    }


def build_release(params: Params, data: DataRef, model: ModelDir, base: ModelDir, cv: CvDetail,
                  gate: Gate) -> ModelDir:
    """Merge (LoRA) or copy (full) the final model, export ONNX, check parity, write the package.

    The gate is not checked again: the final fit packaged here exists only after it passed (`final_fit`).
    The package is a published cache entry (see the module docstring), returned as a ModelDir keyed by its
    manifest's sha256.
    """
    from care.release.signing import sign_if_configured
    from care.run.data import load_data

    sessions, instrument = load_data(data)
    metadata = release_metadata(params, data, base, instrument, cv, gate)
    key = digest([model.key, base.key, params.release.model_dump(mode="json"), metadata, _signer(),
                  source_digest("care.run.release")])[:24]
    entry = cache_root() / "release" / key
    package = entry / "package"
    if not (package / MANIFEST).is_file():
        with new_entry(entry, complete=lambda p: (p / "package" / MANIFEST).is_file()) as work:
            _build(params, sessions, instrument, model, base, cv, metadata, work)
            sign_if_configured(work / "package")  # CARE_SIGNING_KEY: the registered package carries manifest.sig
    return ModelDir(str(package), key=sha256_file(package / MANIFEST))


def _build(params: Params, sessions, instrument, model: ModelDir, base: ModelDir, cv: CvDetail, metadata: dict,
           work: Path) -> None:
    from care.model.presets import load_tokenizer
    from care.release import build_package, check_parity, export_onnx, merge_adapter
    from care.run.fits import ADAPTER, builder

    rel = params.release
    held = sessions[: rel.parity_sessions]
    tokenizer = load_tokenizer(base.path)
    build = builder(params.fit, tokenizer, instrument)
    check = [(e := build.encode(s)).prefix + e.items[instrument.item_ids[0]] for s in held]
    try:
        merge = merge_adapter(base.path, Path(model.path) / ADAPTER, work / "merged", check, rel.merge_max_logit_diff)
        export = export_onnx(work / "merged", work / "onnx", device=rel.export_device)
        fp16 = rel.export_device == "cuda"
        parity = check_parity(
            work / "merged", work / "onnx", held, instrument, PromptConfig.from_params(params.model),
            max_logit_diff=rel.fp16_max_logit_diff if fp16 else rel.max_logit_diff,
            max_score_diff=rel.fp16_max_score_diff if fp16 else rel.max_score_diff, device=rel.export_device,
        )
        build_package(work / "package", work / "onnx", None,
                      resolved_instrument(instrument, work / "instrument.yaml"),
                      {**metadata, "merge": merge, "export": export, "parity": parity},
                      calibration=(cv.intervals or {}).get("calibration"))
    finally:
        for name in ("merged", "onnx"):
            shutil.rmtree(work / name, ignore_errors=True)
