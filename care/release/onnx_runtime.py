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
from typing import Any, Iterable

import numpy as np

from care.data.instrument import Instrument, load_instrument
from care.data.schema import Session
from care.errors import CareError
from care.evaluation import readout
from care.evaluation.readout import SessionScore, item_batches, pad_id
from care.model.prompts import PromptBuilder

MODEL_FILE = "model.onnx"
INSTRUMENT_FILE = "instrument.yaml"
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# --------------------------------------------------------------------------------------------- tokenizer


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _compile_template(template: str):
    """A chat template compiled exactly as transformers does (sandbox, trim/lstrip blocks, tojson, globals)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):  # `{% generation %}` blocks render their body unchanged
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class PackageTokenizer:
    """The parts of a Hugging Face fast tokenizer that prompts and decoding use, from its saved files."""

    def __init__(self, directory: str | Path):
        from tokenizers import Tokenizer

        d = Path(directory)
        self._tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        config = _read_json(d / "tokenizer_config.json")
        smap = _read_json(d / "special_tokens_map.json")
        self.special_tokens_map: dict[str, Any] = {}
        for attr in _SPECIAL_ATTRS:
            value = _token_str(config.get(attr)) or _token_str(smap.get(attr))
            if value:
                self.special_tokens_map[attr] = value
        extra = config.get("additional_special_tokens") or smap.get("additional_special_tokens") or []
        extra = [_token_str(t) for t in extra if _token_str(t)]
        if extra:
            self.special_tokens_map["additional_special_tokens"] = extra
        template = (d / "chat_template.jinja").read_text("utf-8") if (d / "chat_template.jinja").is_file() else config.get("chat_template")
        if isinstance(template, list):  # named templates: use the default one
            template = {t["name"]: t["template"] for t in template}.get("default")
        if not template:
            raise CareError(f"{d}: the tokenizer has no chat template")
        self._template = _compile_template(template)
        self.eos_token_id = self._id(self.special_tokens_map.get("eos_token"))
        self.pad_token_id = self._id(self.special_tokens_map.get("pad_token"))

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False, add_generation_prompt: bool = False,
                            **kwargs: Any):
        """As transformers renders it: extra kwargs (e.g. date_string) reach the template, overriding special tokens."""
        text = self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt, **{**self.special_tokens_map, **kwargs})
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


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
    instrument: Instrument
    tokenizer: PackageTokenizer
    builder: PromptBuilder
    lm: OnnxLM
    eos_ids: set[int]


def load_package(root: str | Path, device: str = "cpu", threads: int | None = None) -> Package:
    """Verify `root` against its manifest, then load tokenizer, instrument and the ONNX model."""
    from care.release.manifest import verify_package

    root = Path(root)
    manifest = verify_package(root)  # raises on any missing, extra or changed file: nothing is loaded before
    scoring = manifest.get("scoring") or {}
    if any(key not in scoring for key in ("max_length", "reserve", "prompt_date")):
        raise CareError(f"{root}: manifest has no scoring config (max_length, reserve, prompt_date)")
    instrument = load_instrument(root / INSTRUMENT_FILE)
    try:
        prompt_date = date.fromisoformat(str(scoring["prompt_date"]))
    except ValueError:
        raise CareError(f"{root}: manifest scoring.prompt_date is not an ISO date") from None
    return open_model_dir(root, instrument, int(scoring["max_length"]), int(scoring["reserve"]), device, threads,
                          manifest=manifest, prompt_date=prompt_date)


def open_model_dir(root: str | Path, instrument: Instrument, max_length: int, reserve: int, device: str = "cpu",
                   threads: int | None = None, manifest: dict[str, Any] | None = None, *,
                   prompt_date: date) -> Package:
    """Load an export directory (model.onnx + tokenizer files) WITHOUT a manifest check: for the parity check
    before packaging. Scoring a release goes through `load_package`."""
    root = Path(root)
    tokenizer = PackageTokenizer(root)
    builder = PromptBuilder(tokenizer, instrument, max_length, reserve, prompt_date)
    lm = OnnxLM(root / MODEL_FILE, device=device, threads=threads)
    eos = {tokenizer.eos_token_id}
    gen = _read_json(root / "generation_config.json").get("eos_token_id")
    eos |= set(gen) if isinstance(gen, list) else {gen}
    return Package(root, manifest or {}, instrument, tokenizer, builder, lm, {e for e in eos if e is not None})


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
                   session_batch: int = 1) -> list[SessionScore]:
    """`readout.score_sessions` with the package's model."""
    return readout.score_sessions(pkg.lm, pkg.builder, sessions, eos_ids=pkg.eos_ids, batch_size=batch_size,
                                  rationales=rationales, max_new_tokens=max_new_tokens, shared_cache=shared_cache,
                                  progress=progress, session_batch=session_batch)


def result_record(score: SessionScore, instrument: Instrument, rationales: bool, ndigits: int = 6) -> dict[str, Any]:
    """One output line: session id, per-item scores, per-dimension scores; never transcript text."""
    r = lambda x: None if x is None else round(float(x), ndigits)  # noqa: E731
    items = {}
    for item_id, s in score.items.items():
        rec: dict[str, Any] = {
            "expected": r(s.expected),
            "distribution": {str(p): r(v) for p, v in zip(instrument.scale.points, s.distribution)},
            "greedy": s.greedy,
        }
        if rationales:
            rec["rationale"] = s.rationale
        items[item_id] = rec
    return {
        "session_id": score.session_id,
        "items": items,
        "dimensions": {d: r(v) for d, v in score.dimensions_expected.items()},
        "dimensions_greedy": {d: r(v) for d, v in score.dimensions_greedy.items()},
        "truncated": score.truncated,
    }
