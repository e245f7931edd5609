"""Scoring with a release package on ONNX Runtime: no torch, no transformers on this path.

A package (see `care.release.package`) holds `model.onnx` (exported with past key/values, logits at the last
position only), the tokenizer files, the instrument YAML and `manifest.json`. `load_package` verifies every
file against the manifest BEFORE anything is loaded and refuses a mismatch.

`PackageTokenizer` replicates what `care.model.prompts.PromptBuilder` needs from a Hugging Face tokenizer with the
`tokenizers` library and jinja2 (the same sandboxed environment and globals as transformers' chat templates),
so prompts are the same token ids as in training (tests/test_score_cli.py checks this).

Scoring is `care.evaluation.readout` (the same code as the PyTorch path) with `OnnxLM` as its backend.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from care.data.instrument import Instrument
from care.data.schema import Session
from care.errors import CareError
from care.evaluation import readout
from care.evaluation.readout import SessionScore, item_batches, pad_id
from care.model.prompts import PromptBuilder, PromptConfig
from care.release.package import ScoringConfig, scoring_config

MODEL_FILE = "model.onnx"
INSTRUMENT_FILE = "instrument.yaml"
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# --------------------------------------------------------------------------------------------- tokenizer


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _compile_template(template: str, where: str = "chat template"):
    """A chat template compiled as transformers does (sandbox, trim/lstrip blocks, tojson, globals), in its own
    process with bounded time, memory and output (`care.release.template_sandbox`): the template is package
    content, i.e. untrusted code."""
    from care.release.template_sandbox import SandboxedTemplate

    return SandboxedTemplate(template, where)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class PackageTokenizer:
    """The parts of a Hugging Face fast tokenizer that prompts and decoding use, from its saved files.

    `source` is a directory (files read from it) or a mapping of file name to the bytes already verified
    (`care score`: never reopened by path)."""

    def __init__(self, source: str | Path | Mapping[str, bytes]):
        from tokenizers import Tokenizer

        if isinstance(source, (str, Path)):
            d = Path(source)
            where = str(d)
            files = {name: (d / name).read_bytes() for name in TOKENIZER_FILES if (d / name).is_file()}
        else:
            where, files = "package", dict(source)
        if "tokenizer.json" not in files:
            raise CareError(f"{where}: no tokenizer.json")
        try:
            self._tok = Tokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception:  # noqa: BLE001 - the library's message may quote the file
            raise CareError(f"{where}: tokenizer.json is not a tokenizer this version of `tokenizers` reads") from None
        config = _json_of(files.get("tokenizer_config.json"), where)
        smap = _json_of(files.get("special_tokens_map.json"), where)
        self.special_tokens_map: dict[str, Any] = {}
        for attr in _SPECIAL_ATTRS:
            value = _token_str(config.get(attr)) or _token_str(smap.get(attr))
            if value:
                self.special_tokens_map[attr] = value
        extra = config.get("additional_special_tokens") or smap.get("additional_special_tokens") or []
        extra = [_token_str(t) for t in extra if _token_str(t)]
        if extra:
            self.special_tokens_map["additional_special_tokens"] = extra
        template = files["chat_template.jinja"].decode("utf-8", "replace") if "chat_template.jinja" in files \
            else config.get("chat_template")
        if isinstance(template, list):  # named templates: use the default one
            template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
        if not isinstance(template, str) or not template:
            raise CareError(f"{where}: the tokenizer has no chat template")
        self._template = _compile_template(template, f"{where}: chat template")
        self.eos_token_id = self._id(self.special_tokens_map.get("eos_token"))
        self.pad_token_id = self._id(self.special_tokens_map.get("pad_token"))

    @property
    def backend_tokenizer(self):
        """The `tokenizers.Tokenizer` (as on a transformers fast tokenizer): grounded quotes read its vocabulary."""
        return self._tok

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs: Any):
        """As transformers renders it: extra kwargs (e.g. date_string) reach the template, overriding special tokens.

        `strftime_now` may be given as a date's (or datetime's) bound `strftime` (what prompts pin); unset, it
        answers today's date."""
        clock = kwargs.pop("strftime_now", None)
        pinned = getattr(clock, "__self__", None)
        if clock is not None and not isinstance(pinned, date):
            raise CareError("strftime_now must be a date's strftime")
        text = self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt,
                                     strftime_date=pinned, now=datetime.now(),
                                     **{**self.special_tokens_map, **kwargs})
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _json_of(data: bytes | None, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CareError(f"{where}: a tokenizer file is not valid JSON") from None
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------ model


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (2 on the CPU runners), at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


class OnnxLM:
    """An exported decoder (`text-generation-with-past`) on ONNX Runtime, as a `readout.Backend`, with I/O binding.

    The key/values stay where the model runs: every pass binds the previous pass's `present.*` OrtValues as its
    `past_key_values.*` inputs and binds its own `present.*` outputs to the device, so they never visit the host
    (on CPU nothing is copied to numpy either). Only the small inputs go in from the host and only the last
    position's logits come back. `select` gathers prefix rows for an item batch on the device (a small graph
    of one ONNX `Gather` per past tensor), so a session's transcript is never copied through the host.

    `model` is a path to `model.onnx` or its bytes (then `external_data_dir` holds its external data file, if
    any). `spinning=False` turns off ONNX Runtime's busy-waiting worker threads: on a shared machine spinning
    threads fight the other processes for the cores (benchmarks/score.py --busy measures that case).
    """

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None, *,
                 external_data_dir: str | Path | None = None, spinning: bool = False):
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        if device not in ("cpu", "cuda"):
            raise CareError(f"unknown device {device!r} (cpu or cuda)")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CareError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                            f"(available: {', '.join(ort.get_available_providers())}); install the gpu extra "
                            "(onnxruntime-gpu) with CUDA libraries, or use --device cpu")
        if device == "cuda" and hasattr(ort, "preload_dlls"):
            import contextlib
            import sys

            with contextlib.redirect_stdout(sys.stderr):  # it prints what it cannot load; stdout may carry scores
                ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, which are not on the loader's path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        if isinstance(model, bytes) and external_data_dir is not None:
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                          str(external_data_dir))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        name = "the model bytes" if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                            providers=providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise CareError("--device cuda: ONNX Runtime fell back to CPU (CUDA libraries missing or unusable); "
                            "refusing to run on CPU silently; use --device cpu")
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        if not self.past_names or "position_ids" not in inputs:
            raise CareError(f"{name}: not a decoder exported with past key/values and position ids")
        shape = inputs[self.past_names[0]].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.kv_dtype = np.float16 if "float16" in inputs[self.past_names[0]].type else np.float32
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.device = device
        self._ort = ort
        self._gather = ort.InferenceSession(_gather_graph(len(self.past_names), self.kv_dtype), opts,
                                            providers=providers)

    def empty_past(self, batch: int) -> list:
        """The past of no tokens: zero-length OrtValues on the device."""
        shape = [batch, self.kv_heads, 0, self.head_dim]
        return [self._ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, self.device, 0)
                for _ in self.past_names]

    def select(self, past: list, rows: np.ndarray) -> list:
        """Rows `rows` of every past tensor, gathered on the device into new OrtValues."""
        io = self._gather.io_binding()
        io.bind_cpu_input("rows", np.ascontiguousarray(rows, dtype=np.int64))
        for k, value in enumerate(past):
            io.bind_ortvalue_input(f"kv{k}", value)
            io.bind_output(f"out{k}", self.device, 0)
        self._gather.run_with_iobinding(io)
        return io.get_outputs()

    def forward(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list):
        """Last-position logits (batch, vocab) in float64 on the host, and the present key/values on the device."""
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, dtype=np.int64))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(positions, dtype=np.int64))
        for name, value in zip(self.past_names, past):
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", "cpu")
        for name in self.present_names:
            io.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(io)
        out = io.get_outputs()
        return out[0].numpy()[:, -1, :].astype(np.float64), out[1:]


def _gather_graph(n: int, dtype) -> bytes:
    """A model with inputs kv0..kv{n-1} and `rows`, and outputs out_k = Gather(kv_k, rows, axis=0)."""
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    kv = [helper.make_tensor_value_info(f"kv{k}", elem, ["b", "h", "t", "d"]) for k in range(n)]
    out = [helper.make_tensor_value_info(f"out{k}", elem, ["r", "h", "t", "d"]) for k in range(n)]
    rows = helper.make_tensor_value_info("rows", TensorProto.INT64, ["r"])
    nodes = [helper.make_node("Gather", [f"kv{k}", "rows"], [f"out{k}"], axis=0) for k in range(n)]
    model = helper.make_model(helper.make_graph(nodes, "care_select_rows", kv + [rows], out),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _layer_order(name: str) -> tuple[int, int]:
    _, layer, kind = name.split(".")
    return int(layer), 0 if kind == "key" else 1


# ---------------------------------------------------------------------------------------------- package


@dataclass
class Package:
    """A verified release package, loaded for scoring."""

    root: Path
    manifest: dict[str, Any]
    scoring: ScoringConfig | None  # the manifest's scoring section (None: an export directory, no manifest)
    instrument: Instrument
    tokenizer: PackageTokenizer
    builder: PromptBuilder
    lm: OnnxLM
    eos_ids: set[int]


def _external_data(rel: str) -> bool:
    return rel.startswith(MODEL_FILE) and rel != MODEL_FILE  # model.onnx_data (weights over 2 GB)


def load_package(root: str | Path, device: str = "cpu", threads: int | None = None,
                 trusted_key: str | Path | None = None) -> Package:
    """Verify `root` against its manifest and build tokenizer, instrument and ONNX model from the verified bytes.

    Every file is read once (`care.release.manifest.read_verified`) and everything is built from those bytes,
    never from a path reopened after the check. A model with external data (model.onnx_data) is loaded from a
    private copy written from the hashed chunks, deleted once ONNX Runtime holds the model. With
    `trusted_key` (a PEM public key) the package must carry a signature of its manifest by that key.
    """
    import shutil
    import tempfile

    from care.release.manifest import read_verified

    root = Path(root)
    private = Path(tempfile.mkdtemp(prefix="care-package-"))  # 0700: this user only
    try:
        pkg = read_verified(root, copy_dir=private, copy=_external_data)  # raises on any mismatch: nothing is built
        if trusted_key is not None:
            from care.release.signing import verify_signature

            verify_signature(pkg.manifest_bytes, pkg.signature, trusted_key, str(root))
        if pkg.copies:  # ONNX Runtime finds external data beside the model file: both from the private copy
            from care.fsutil import atomic_write_bytes

            atomic_write_bytes(private / MODEL_FILE, pkg.data.pop(MODEL_FILE))
        loaded = open_model_dir(root, None, device=device, threads=threads, files=pkg.data,
                                model=private / MODEL_FILE if pkg.copies else None, manifest=pkg.manifest)
        for language in loaded.instrument.languages:  # renders the template once per language, before any scoring
            loaded.builder.suffixes(language)
        return loaded
    finally:
        shutil.rmtree(private, ignore_errors=True)


def open_model_dir(root: str | Path, instrument: Instrument | None = None, config: PromptConfig | None = None,
                   device: str = "cpu", threads: int | None = None, manifest: dict[str, Any] | None = None, *,
                   files: Mapping[str, bytes] | None = None, model: str | Path | None = None) -> Package:
    """Build a Package from `files` (name -> verified bytes, as `load_package` passes them) or, without `files`,
    from an export directory read WITHOUT a manifest check (the parity check before packaging).

    The model comes from `files["model.onnx"]` (bytes), else from `model` (a path), else `root/model.onnx`. The
    instrument and the prompt config default to the package's (`instrument.yaml`, the manifest's `scoring`)."""
    from care.data.instrument import parse_instrument

    root = Path(root)
    scoring = None if manifest is None else scoring_config(manifest.get("scoring"), str(root / "manifest.json"))
    config = config or scoring
    if config is None:
        raise CareError(f"{root}: no prompt config (neither given nor from a manifest)")
    if files is None:
        files = {name: (root / name).read_bytes() for name in (*TOKENIZER_FILES, "generation_config.json")
                 if (root / name).is_file()}
    tokenizer = PackageTokenizer(files) if files else PackageTokenizer(root)
    if instrument is None:
        if INSTRUMENT_FILE not in files:
            raise CareError(f"{root}: no {INSTRUMENT_FILE}")
        instrument = parse_instrument(files[INSTRUMENT_FILE].decode("utf-8", "replace"), str(root / INSTRUMENT_FILE))
    builder = PromptBuilder(tokenizer, instrument, config)
    try:
        lm = OnnxLM(files[MODEL_FILE] if MODEL_FILE in files else (model or root / MODEL_FILE), device=device,
                    threads=threads)
    except CareError:
        raise
    except Exception as exc:  # ONNX Runtime refuses the model file: one line, not its traceback
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise CareError(f"{root}: {MODEL_FILE} does not load in ONNX Runtime ({type(exc).__name__})") from None
    eos = {tokenizer.eos_token_id}
    gen = _json_of(files.get("generation_config.json"), str(root)).get("eos_token_id")
    eos |= set(gen) if isinstance(gen, list) else {gen}
    return Package(root, manifest or {}, scoring, instrument, tokenizer, builder, lm, {e for e in eos if e is not None})


# ---------------------------------------------------------------------------------------------- scoring


def answer_logits(pkg: Package, session: Session, batch_size: int = 16) -> tuple[list[str], np.ndarray]:
    """Item ids and their answer-position logits (items x vocab), through the shared-cache path (parity checks)."""
    enc = pkg.builder.encode(session)
    items, rows = [], []
    for batch, _, logits, _, _ in item_batches(pkg.lm, enc, pkg.instrument.item_ids, batch_size, pad_id(pkg.tokenizer)):
        items += [item for _, item in batch]
        rows.append(logits)
    return items, np.concatenate(rows)


def score_sessions(pkg: Package, sessions: Iterable[Session], *, batch_size: int = 16, rationales: bool = False,
                   max_new_tokens: int = 96, shared_cache: bool = True, progress: bool = True,
                   grounded_quotes: bool = True, session_batch: int = 1) -> list[SessionScore]:
    """`readout.score_sessions` with the package's model."""
    return readout.score_sessions(pkg.lm, pkg.builder, sessions, eos_ids=pkg.eos_ids, batch_size=batch_size,
                                  rationales=rationales, max_new_tokens=max_new_tokens, shared_cache=shared_cache,
                                  progress=progress, grounded_quotes=grounded_quotes, session_batch=session_batch)


def result_record(score: SessionScore, instrument: Instrument, rationales: bool, ndigits: int = 6,
                  calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """One output line: session id, per-item scores, per-dimension scores; never transcript text.

    With `rationales`, each item's rationale and where its quotes are (`quotes: [{turn, start, end}]`); with a
    `calibration` (care.release.calibration), `interval: {level: [lo, hi]}` per item and per dimension
    (the record's `interval` maps each dimension to its levels), clipped to the scale.
    """
    r = lambda x: None if x is None else round(float(x), ndigits)  # noqa: E731
    spans = None
    if calibration is not None:
        from care.evaluation.intervals import session_intervals

        spans = session_intervals(calibration, instrument, {i: s.expected for i, s in score.items.items()},
                                  {i: s.distribution for i, s in score.items.items()})
    items = {}
    for item_id, s in score.items.items():
        rec: dict[str, Any] = {
            "expected": r(s.expected),
            "distribution": {str(p): r(v) for p, v in zip(instrument.scale.points, s.distribution)},
            "greedy": s.greedy,
        }
        if spans is not None:
            rec["interval"] = {level: [r(lo), r(hi)] for level, (lo, hi) in spans["items"][item_id].items()}
        if rationales:
            rec["rationale"] = s.rationale
            rec["quotes"] = s.quotes
        items[item_id] = rec
    out = {
        "session_id": score.session_id,
        "items": items,
        "dimensions": {d: r(v) for d, v in score.dimensions_expected.items()},
        "dimensions_greedy": {d: r(v) for d, v in score.dimensions_greedy.items()},
        "truncated": score.truncated,
    }
    if spans is not None:
        out["interval"] = {d: {level: [r(lo), r(hi)] for level, (lo, hi) in cells.items()}
                           for d, cells in spans["dimensions"].items()}
    return out
