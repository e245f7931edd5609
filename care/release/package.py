"""Release packages: the ONNX model, its tokenizer, the instrument, a model card and a manifest.

Layout (every file listed with size and sha256 in `manifest.json`, written last):

    model.onnx [model.onnx_data]   the exported decoder (logits at the last position only)
    tokenizer.json tokenizer_config.json special_tokens_map.json [chat_template.jinja] [generation_config.json]
    config.json                    the model config (informational)
    instrument.yaml                the questionnaire the model scores
    [calibration.json]             the conformal intervals' calibration (care.release.calibration)
    README.md                      the model card
    manifest.json                  metadata (data version, commit, params digest, metrics, gate, scoring config)

The package is built in a temporary sibling directory and renamed into place (care.fsutil.atomic_dir).
`care score --model DIR` (care.release.onnx_runtime.load_package) refuses a package that does not match its manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, ValidationError

from care.errors import CareError, label
from care.fsutil import atomic_dir
from care.model.prompts import PromptConfig
from care.params import Readout
from care.release.calibration import write_calibration
from care.release.manifest import write_manifest
from care.release.model_card import model_card

FORMAT = "care-release/1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
_SHOWN = 10  # problems of a scoring config named in the refusal


class ScoringConfig(PromptConfig):
    """The manifest's `scoring` section: the prompt config the model was trained with, and what else scoring
    needs to know of the release (every field required; unknown keys are refused)."""

    languages: list[str] = Field(min_length=1)  # the training data's languages
    prompt_version: str  # digest of the instrument's prompt wording (care.run.release.prompt_version)
    readout: Readout  # eval.readout of the run
    grounded_quotes: bool  # eval.grounded_quotes: what `care score` does by default


def scoring_config(section: Any, where: str) -> ScoringConfig:
    """A manifest's `scoring` section, validated; one line naming each wrong key otherwise."""
    try:
        return ScoringConfig.model_validate(section)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        wrong = "; ".join(f"{label('.'.join(str(x) for x in e['loc']) or 'scoring')}: {e['msg']}"
                          for e in errors[:_SHOWN]) + (f"; {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else "")
        raise CareError(f"{where}: scoring config: {wrong} (a package made by another version of care: rebuild "
                        "it)") from None


def build_package(out_dir: str | Path, onnx_dir: str | Path, tokenizer_dir: str | Path | None,
                  instrument_path: str | Path, metadata: Mapping[str, Any],
                  calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the release package at `out_dir` atomically; returns the manifest.

    `calibration` (care.evaluation.intervals.calibrate's) is written as calibration.json, so `care score`
    gives intervals.

    `metadata` must hold `scoring` (a `ScoringConfig`'s JSON); other keys (data_version, git_commit,
    params_digest, base_model, cv, gate, parity, ...) are recorded as given (numbers and ids only: never
    transcript text).
    """
    onnx_dir = Path(onnx_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else onnx_dir
    scoring_config(metadata.get("scoring"), "package metadata")
    model_files = sorted(p for p in onnx_dir.iterdir() if p.name.startswith("model.onnx"))
    if not any(p.name == "model.onnx" for p in model_files):
        raise CareError(f"{onnx_dir}: no model.onnx")
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise CareError(f"{tokenizer_dir}: no tokenizer.json (a fast tokenizer is required)")
    from care.data.instrument import load_instrument

    instrument = load_instrument(instrument_path)
    with atomic_dir(out_dir) as tmp:
        for p in model_files:
            shutil.copyfile(p, tmp / p.name)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
        if (onnx_dir / "config.json").is_file():
            shutil.copyfile(onnx_dir / "config.json", tmp / "config.json")
        shutil.copyfile(instrument_path, tmp / "instrument.yaml")
        if calibration is not None:
            from care.evaluation.intervals import check_calibration

            write_calibration(tmp, check_calibration(dict(calibration), instrument, "calibration"))
        (tmp / "README.md").write_text(model_card(metadata, instrument), "utf-8")
        manifest = write_manifest(tmp, {"format": FORMAT, "instrument": instrument.name, **metadata})
    return manifest
