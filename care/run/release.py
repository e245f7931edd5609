"""After the gate: the final fit merged, exported to ONNX, checked for parity and packaged (care.release does each)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from care.errors import CareError
from care.cache import cache_root, digest
from care.params import Params
from care.release.manifest import MANIFEST, sha256_file
from care.run.artifacts import ModelDir
from care.run.data import DataRef
from care.safe_yaml import load_yaml_file


def data_version(data_path: str | Path, sha256: str, dvc_file: str | Path = "data.dvc") -> str:
    """The data's version: DVC's md5 when `data_path` lies in the directory `dvc_file` tracks, else its sha256."""
    path = Path(dvc_file)
    if path.is_file():
        outs = (load_yaml_file(path, "DVC file") or {}).get("outs") or []
        for out in outs:
            tracked = (path.parent / str(out.get("path", ""))).resolve()
            if out.get("md5") and Path(data_path).resolve().is_relative_to(tracked):
                return str(out["md5"])
    return f"sha256:{sha256}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def prompt_version(instrument) -> str:
    """The prompt format's version: a digest of the code that renders prompts and of the instrument's
    prompt wording (never bumped by hand)."""
    from care.cache import source_digest

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


def build_release(params: Params, data: DataRef, model: ModelDir, base: ModelDir, cv: dict, gate: dict) -> ModelDir:
    """Merge (LoRA) or copy (full) the final model, export ONNX, check parity, write the package.

    Refuses when the gate did not pass. The package is built under the cache (keyed by the fit and the
    release params) and returned as a ModelDir keyed by its manifest's sha256.
    """
    from care.model.base_files import base_provenance
    from care.model.presets import load_tokenizer
    from care.evaluation.intervals import summary as interval_summary
    from care.release import build_package, check_parity, export_onnx, merge_adapter
    from care.release.signing import sign_if_configured
    from care.run.data import load_data
    from care.run.fits import ADAPTER, builder

    if not gate.get("passed"):
        raise CareError("the gate did not pass: nothing is exported")
    sessions, instrument = load_data(data)
    work = cache_root() / "release" / digest([model.key, params.release.model_dump(mode="json")])[:24]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    package = work / "package"
    try:
        rel = params.release
        held = sessions[: rel.parity_sessions]
        tokenizer = load_tokenizer(base.path)
        build = builder(params.fit, tokenizer, instrument)
        check = [(e := build.encode(s)).prefix + e.items[instrument.item_ids[0]] for s in held]
        merge = merge_adapter(base.path, Path(model.path) / ADAPTER, work / "merged", check, rel.merge_max_logit_diff)
        export = export_onnx(work / "merged", work / "onnx", device=rel.export_device)
        fp16 = rel.export_device == "cuda"
        parity = check_parity(
            work / "merged", work / "onnx", held, instrument, max_length=params.model.max_length,
            reserve=params.model.target_tokens, prompt_date=params.model.prompt_date,
            context_policy=params.model.context_policy,
            max_logit_diff=rel.fp16_max_logit_diff if fp16 else rel.max_logit_diff,
            max_score_diff=rel.fp16_max_score_diff if fp16 else rel.max_score_diff, device=rel.export_device,
        )
        metadata = {
            "data_version": data_version(data.path, data.sha256),
            "data_path": data.path,
            "data_sha256": data.sha256,
            "n_sessions": data.n_sessions,
            "git_commit": git_commit(),
            "params_digest": params.digest(),
            "base_model": base_model_id(params.model.base, params.model.preset),
            "base": base_provenance(base.path, base.key),
            "preset": params.model.preset,
            "finetune": params.model.finetune,
            "targets": params.train.targets,
            "instrument": instrument.name,
            "cv": {**{k: cv[k] for k in ("mean", "std", "baselines", "n_folds", "n_sessions", "unparsed", "readout",
                                         "targets", "targets_requested", "score_only_fallback_share", "transcripts",
                                         "warnings", "rationale_quality") if k in cv},
                   **({"intervals": interval_summary(cv["intervals"])} if cv.get("intervals") else {})},
            "gate": gate,
            "merge": merge,
            "export": export,
            "parity": parity,
            "scoring": {"max_length": params.model.max_length, "reserve": params.model.target_tokens,
                        "context_policy": params.model.context_policy,
                        "languages": data.languages, "prompt_version": prompt_version(instrument),
                        "prompt_date": params.model.prompt_date.isoformat(),
                        "readout": params.eval.readout, "grounded_quotes": params.eval.grounded_quotes},
        }
        build_package(package, work / "onnx", None, resolved_instrument(instrument, work / "instrument.yaml"), metadata,
                      calibration=(cv.get("intervals") or {}).get("calibration"))
        sign_if_configured(package)  # CARE_SIGNING_KEY: the package the next step registers carries manifest.sig
    finally:
        for name in ("merged", "onnx"):
            shutil.rmtree(work / name, ignore_errors=True)
    return ModelDir(str(package), key=sha256_file(package / MANIFEST))
