"""Release packages: the ONNX model, its tokenizer, the instrument, a model card and a manifest.

Layout (every file listed with size and sha256 in `manifest.json`, written last):

    model.onnx [model.onnx_data]   the exported decoder (logits at the last position only)
    tokenizer.json tokenizer_config.json special_tokens_map.json [chat_template.jinja] [generation_config.json]
    config.json                    the model config (informational)
    instrument.yaml                the questionnaire the model scores
    README.md                      the model card
    manifest.json                  metadata (data version, commit, params digest, metrics, gate, scoring config)

The package is built in a temporary sibling directory and renamed into place (care.fsutil.atomic_dir).
`care score --model DIR` (care.release.onnx_runtime.load_package) refuses a package that does not match its manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from care.errors import CareError
from care.fsutil import atomic_dir
from care.release.manifest import write_manifest

FORMAT = "care-release/1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
REQUIRED_SCORING = ("max_length", "reserve", "languages", "prompt_version")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _metrics_table(cv: Mapping[str, Any]) -> str:
    """Pearson r (MSE) per dimension for the model (mean +/- std over folds) and each baseline."""
    mean, std = cv.get("mean") or {}, cv.get("std") or {}
    dims = list(mean) or sorted({d for b in (cv.get("baselines") or {}).values() for d in b})
    if not dims:
        return "No cross-validation metrics were recorded.\n"
    lines = ["| system | " + " | ".join(dims) + " |", "|---|" + "---|" * len(dims)]

    def cell(m: Mapping, s: Mapping | None) -> str:
        r = _fmt(m.get("pearson"))
        if s and s.get("pearson") is not None:
            r += f" ± {s['pearson']:.2f}"
        return f"{r} ({_fmt(m.get('mse'))})"

    lines.append("| this model | " + " | ".join(cell(mean.get(d, {}), std.get(d)) for d in dims) + " |")
    for name, b in (cv.get("baselines") or {}).items():
        lines.append(f"| baseline: {name} | " + " | ".join(cell(b.get(d, {}), None) for d in dims) + " |")
    return "\n".join(lines) + "\n\nCells: Pearson r (MSE) against the clients' own ratings, mean ± std over folds.\n"


def model_card(metadata: Mapping[str, Any], instrument_name: str) -> str:
    s = metadata["scoring"]
    gate = metadata.get("gate") or {}
    langs = ", ".join(s["languages"])
    return f"""# CARE alliance model ({instrument_name})

Predicts how a client would rate the working alliance of a counseling session ({instrument_name}: each item on
its scale, and each dimension as the mean of its items) from the session transcript, with an optional
generated rationale per item.

## Intended use
Decision support for counselors and supervisors: a prompt for reflection and supervision, read next to the
transcript and the client's own feedback. It is **not** a diagnosis, not an assessment of the client, and not
a measure of a counselor's performance on its own; never use it to make decisions about a person.

## Data
- Data version: {metadata.get('data_version', 'n/a')}
- Code commit: {metadata.get('git_commit', 'n/a')}
- Params digest: {metadata.get('params_digest', 'n/a')}
- Base model: {metadata.get('base_model', 'n/a')} (fine-tune: {metadata.get('finetune', 'n/a')})
- Transcript language(s): {langs}

## Cross-validated metrics (client-grouped folds)
{_metrics_table(metadata.get('cv') or {})}
Release gate: {'passed' if gate.get('passed') else 'NOT passed' if gate else 'n/a'}.

## Limitations
- Trained on the language(s) and counseling culture of its training data ({langs}); other languages,
  settings or populations are untested.
- Rationales imitate expert-written references; they can sound convincing and still be wrong.
- Text-only: the model tends to trust polite wording and misses behaviour outside the words, such as
  lateness, missed sessions or disengagement.
- The final model is fit on all data after cross-validation, with no checkpoint selection; the metrics
  above are estimates from the folds, not measurements of this exact model.
- Correlations with clients' ratings are moderate; treat single-session scores as noisy.

## How to score
```
care score --model THIS_DIR sessions.jsonl --out scores.jsonl [--rationales] [--device cpu|cuda]
```
Input: the annotation JSONL format (ratings not needed). Output: one line per session with per-item
expected score, distribution, greedy score (and rationale), and per-dimension scores; never the transcript.
Scoring config: max_length {s['max_length']}, reserve {s['reserve']}, prompt version {s['prompt_version']}.
The package is verified against `manifest.json` before loading; a changed, missing or extra file is refused.
"""


def build_package(out_dir: str | Path, onnx_dir: str | Path, tokenizer_dir: str | Path | None,
                  instrument_path: str | Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Assemble the release package at `out_dir` atomically; returns the manifest.

    `metadata` must hold `scoring` = {max_length, reserve, languages, prompt_version}; other keys (data_version,
    git_commit, params_digest, base_model, cv, gate, parity, ...) are recorded as given (numbers and ids only:
    never transcript text).
    """
    onnx_dir = Path(onnx_dir)
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else onnx_dir
    scoring = metadata.get("scoring") or {}
    missing = [k for k in REQUIRED_SCORING if k not in scoring]
    if missing:
        raise CareError(f"package metadata: scoring config lacks {', '.join(missing)}")
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
        (tmp / "README.md").write_text(model_card(metadata, instrument.name), "utf-8")
        manifest = write_manifest(tmp, {"format": FORMAT, "instrument": instrument.name, **metadata})
    return manifest
