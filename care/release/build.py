"""After the gate: the final fit's model merged, exported, checked for parity and packaged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from care.errors import CareError
from care.data.instrument import instrument_path, load_instrument
from care.params import Params
from care.run.workspace import cache_root, digest

PROMPT_VERSION = "1"


def data_version(dvc_file: str | Path = "data.dvc") -> str | None:
    """The md5 DVC recorded for the data (the data version), or None when the data is not DVC-tracked."""
    path = Path(dvc_file)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text("utf-8")) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_release(params: Params, fit_dir: str, cv: dict, gate: dict, data_summary: dict) -> str:
    """Merge (LoRA) or copy (full) the final model, export ONNX, check parity, write the package.

    Refuses when the gate did not pass. Returns the package directory (params.release.out).
    """
    from care.run.crossval import load_data, _builder
    from care.model.presets import load_tokenizer
    from care.release import build_package, check_parity, export_onnx, merge_adapter

    if not gate.get("passed"):
        raise CareError("the gate did not pass: nothing is exported")
    sessions, instrument = load_data(params)
    done = json.loads((Path(fit_dir) / "done.json").read_text("utf-8"))
    work = cache_root() / "release" / digest([fit_dir, params.release.model_dump(mode="json")])[:24]
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        rel = params.release
        held = sessions[: rel.parity_sessions]
        tokenizer = load_tokenizer(done["base"])
        builder = _builder(params, tokenizer, instrument)
        check = [(e := builder.encode(s)).prefix + e.items[instrument.item_ids[0]] for s in held]
        merge = merge_adapter(done["base"], Path(fit_dir) / "model", work / "merged", check, rel.merge_max_logit_diff)
        export = export_onnx(work / "merged", work / "onnx", device=rel.export_device)
        fp16 = rel.export_device == "cuda"
        parity = check_parity(
            work / "merged", work / "onnx", held, instrument, max_length=params.model.max_length,
            reserve=params.model.target_tokens,
            max_logit_diff=rel.fp16_max_logit_diff if fp16 else rel.max_logit_diff,
            max_score_diff=rel.fp16_max_score_diff if fp16 else rel.max_score_diff, device=rel.export_device,
        )
        metadata = {
            "data_version": data_version(),
            "data_sha256": data_summary["sha256"],
            "n_sessions": data_summary["n_sessions"],
            "git_commit": git_commit(),
            "params_digest": params.digest(),
            "base_model": params.model.base or params.model.preset,
            "preset": params.model.preset,
            "finetune": params.model.finetune,
            "targets": params.train.targets,
            "instrument": instrument.name,
            "cv": {k: cv[k] for k in ("mean", "std", "baselines", "n_folds", "n_sessions", "unparsed", "readout") if k in cv},
            "gate": gate,
            "merge": merge,
            "export": export,
            "parity": parity,
            "scoring": {"max_length": params.model.max_length, "reserve": params.model.target_tokens,
                        "languages": data_summary["languages"], "prompt_version": PROMPT_VERSION,
                        "readout": params.eval.readout},
        }
        build_package(rel.out, work / "onnx", None, instrument_path(params.data.instrument), metadata)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return str(Path(rel.out).resolve())
