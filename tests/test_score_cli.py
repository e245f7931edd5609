"""`care score`: output schema, determinism, no transcript in the output, shared cache == per item == torch,
clear failure for --device cuda without CUDA, bad inputs (nothing written), and no torch on the score path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import corpus_rows, session_dict, write_jsonl_file
from test_release import PROMPT, build_tiny_release

MARKER = "ZQXJ-unique-marker-7781"


@pytest.fixture(scope="module")
def rel(tmp_path_factory):
    return build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rows = corpus_rows(3, n_turns=12, seed=4)
    rows[0]["turns"][1]["text"] = f"我觉得 {MARKER} 很重要"
    rows[1]["client_ratings"] = None
    rows[2]["language"] = "en"
    return write_jsonl_file(tmp_path_factory.mktemp("score_in"), rows)


def test_output_schema_determinism_no_transcript(rel, inputs, run_cli, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"scores{k}.jsonl"
        result = run_cli("score", "--model", rel["package"], inputs, "--out", out, "--batch-size", "5")
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    text = outs[0].decode("utf-8")
    assert MARKER not in text and "第1句话" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["session_id"] for r in records] == ["s00000", "s00001", "s00002"]
    for r in records:
        assert set(r) == {"session_id", "items", "dimensions", "dimensions_greedy", "truncated", "interval"}
        assert list(r["items"]) == [str(i) for i in range(1, 13)]
        for item in r["items"].values():
            assert set(item) == {"expected", "distribution", "greedy", "interval"}
            assert 1 <= item["expected"] <= 5 and list(item["distribution"]) == ["1", "2", "3", "4", "5"]
            assert abs(sum(item["distribution"].values()) - 1) < 1e-4
            assert list(item["interval"]) == ["80", "90"]
            (lo80, hi80), (lo90, hi90) = item["interval"]["80"], item["interval"]["90"]
            assert 1 <= lo90 <= lo80 <= item["expected"] <= hi80 <= hi90 <= 5
        assert set(r["interval"]) == {"goal", "task", "bond"}
        assert all(1 <= c["80"][0] <= r["dimensions"][d] <= c["80"][1] <= 5 for d, c in r["interval"].items())
        assert set(r["dimensions"]) == {"goal", "task", "bond"}
        bond = [r["items"][i]["expected"] for i in ("3", "5", "7", "9")]
        assert abs(r["dimensions"]["bond"] - sum(bond) / 4) < 1e-5


def test_stdout_and_rationales(rel, inputs, run_cli):
    result = run_cli("score", "--model", rel["package"], inputs, "--rationales", "--max-new-tokens", "6",
                     "--session-batch", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and all(isinstance(i["rationale"], str) for r in records for i in r["items"].values())
    turns = {json.loads(line)["session_id"]: [t["text"] for t in json.loads(line)["turns"]]
             for line in inputs.read_text("utf-8").splitlines()}
    for r in records:
        for item in r["items"].values():
            assert isinstance(item["quotes"], list)
            for q in item["quotes"]:  # a quote's place: its text is in the rationale
                assert turns[r["session_id"]][q["turn"]][q["start"]:q["end"]] in item["rationale"]
    free = run_cli("score", "--model", rel["package"], inputs, "--rationales", "--max-new-tokens", "6", "--free-quotes")
    assert free.exit_code == 0, free.output


def test_a_package_without_calibration_scores_without_intervals(rel, inputs, run_cli, tmp_path):
    import shutil

    from care.release.manifest import read_manifest, write_manifest

    pkg = tmp_path / "old"
    shutil.copytree(rel["package"], pkg)
    (pkg / "calibration.json").unlink()
    write_manifest(pkg, {k: v for k, v in read_manifest(pkg).items() if k != "files"})
    result = run_cli("score", "--model", pkg, inputs)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert "interval" not in record and "interval" not in record["items"]["1"]
    assert "no intervals (the package has no calibration)" in result.stderr


def test_shared_cache_equals_per_item_and_torch(rel, inputs):
    from care.release.onnx_runtime import load_package, score_sessions
    from care.evaluation.torch_scoring import score_sessions as torch_score
    from care.model.training import load_finetuned
    from care.data.validation import load_valid_sessions

    pkg = load_package(rel["package"])
    sessions = load_valid_sessions(inputs, pkg.instrument, ratings_required=False)
    kw = dict(rationales=True, max_new_tokens=5, progress=False)
    shared = score_sessions(pkg, sessions, batch_size=5, shared_cache=True, **kw)
    each = score_sessions(pkg, sessions, shared_cache=False, **kw)
    model, tok = load_finetuned(rel["base"], rel["adapter"])
    builder = __import__("care.model.prompts", fromlist=["PromptBuilder"]).PromptBuilder(tok, pkg.instrument, PROMPT)
    reference = torch_score(model, tok, builder, sessions, batch_size=16, shared_cache=False, **kw)
    for a, b, c in zip(shared, each, reference):
        assert a.session_id == b.session_id == c.session_id
        for item in pkg.instrument.item_ids:
            x, y, z = a.items[item], b.items[item], c.items[item]
            assert abs(x.expected - y.expected) < 1e-4 and abs(x.expected - z.expected) < 1e-4
            assert max(abs(p - q) for p, q in zip(x.distribution, z.distribution)) < 1e-4
            assert x.greedy == y.greedy == z.greedy
            assert x.rationale == y.rationale == z.rationale


class _SessionRun:
    """The ONNX Runtime scorer before I/O binding, kept as the oracle: numpy feeds and fetches through
    `InferenceSession.run`, prefix rows copied on the host."""

    def __init__(self, lm):
        self.lm = lm

    def empty_past(self, batch):
        return [np.zeros((batch, self.lm.kv_heads, 0, self.lm.head_dim), self.lm.kv_dtype) for _ in self.lm.past_names]

    def select(self, past, rows):
        return [np.take(kv, rows, axis=0) for kv in past]

    def forward(self, ids, mask, positions, past):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                **dict(zip(self.lm.past_names, past))}
        out = self.lm.session.run(["logits", *self.lm.present_names], feed)
        return out[0][:, -1, :].astype(np.float64), out[1:]


def test_io_binding_equals_plain_session_run(rel, inputs):
    """I/O binding (state on the device, rows gathered there, several sessions per batch) scores exactly as
    the plain `session.run` path (1e-6), and the key/values it hands on are OrtValues, never numpy."""
    import onnxruntime as ort

    from care.data.validation import load_valid_sessions
    from care.evaluation import readout
    from care.release.onnx_runtime import OnnxLM, load_package, score_sessions

    pkg = load_package(rel["package"])
    sessions = load_valid_sessions(inputs, pkg.instrument, ratings_required=False)
    kw = dict(rationales=True, max_new_tokens=5, progress=False)
    plain = readout.score_sessions(_SessionRun(pkg.lm), pkg.builder, sessions, eos_ids=pkg.eos_ids, batch_size=5, **kw)
    for session_batch in (1, 2):
        bound = score_sessions(pkg, sessions, batch_size=5, session_batch=session_batch, **kw)
        for a, b in zip(plain, bound):
            assert a.session_id == b.session_id
            for item in pkg.instrument.item_ids:
                x, y = a.items[item], b.items[item]
                assert abs(x.expected - y.expected) < 1e-6 and abs(x.digit_mass - y.digit_mass) < 1e-6
                assert max(abs(p - q) for p, q in zip(x.distribution, y.distribution)) < 1e-6
                assert (x.greedy, x.rationale) == (y.greedy, y.rationale)

    enc = pkg.builder.encode(sessions[0])
    n = len(enc.prefix)
    args = (np.asarray([enc.prefix]), np.ones((1, n), np.int64), np.arange(n)[None, :])
    logits, present = pkg.lm.forward(*args, pkg.lm.empty_past(1))
    assert all(isinstance(v, ort.OrtValue) for v in present) and len(present) == len(pkg.lm.past_names)
    rows = pkg.lm.select(present, np.array([0, 0, 0]))
    assert all(isinstance(v, ort.OrtValue) and v.shape()[0] == 3 for v in rows)
    assert np.array_equal(rows[0].numpy()[2], present[0].numpy()[0])
    from_bytes = OnnxLM((Path(rel["package"]) / "model.onnx").read_bytes())
    assert np.array_equal(from_bytes.forward(*args, from_bytes.empty_past(1))[0], logits)


def test_device_cuda_fails_clearly(rel, inputs, run_cli, tmp_path):
    out = tmp_path / "o.jsonl"
    result = run_cli("score", "--model", rel["package"], inputs, "--device", "cuda", "--out", out)
    assert result.exit_code == 1
    assert "cuda" in result.stderr.lower() and "CUDAExecutionProvider" in result.stderr
    assert not out.exists()


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = json.dumps(session_dict(session_id="ok1"), ensure_ascii=False)
    bad_speaker = session_dict(session_id="s_bad")
    bad_speaker["turns"][1]["speaker"] = "therapist"
    cases = {
        "malformed": (["{not json", good], ":1 "),
        "speaker": ([good, json.dumps(bad_speaker, ensure_ascii=False)], "session=s_bad field=turns[1].speaker"),
        "empty": ([json.dumps(session_dict(session_id="s_empty", turns=[]), ensure_ascii=False)],
                  "session=s_empty field=turns"),
    }
    out = {name: (write_jsonl_file(tmp / f"{name}.jsonl", rows), where) for name, (rows, where) in cases.items()}
    out["missing"] = (tmp / "nope.jsonl", "nope.jsonl")
    return out


@pytest.mark.parametrize("case", ["malformed", "speaker", "empty", "missing"])
def test_bad_input_exits_1_and_writes_nothing(rel, run_cli, tmp_path, case):
    path, where = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.jsonl"
    result = run_cli("score", "--model", rel["package"], path, "--out", out)
    assert result.exit_code == 1, result.output
    assert where in result.stderr
    assert not out.exists() and result.stdout == ""


def test_score_path_imports_no_torch(rel, inputs, tmp_path):
    out = tmp_path / "o.jsonl"
    code = (
        "import sys\n"
        "from care_cli.main import app\n"
        f"try:\n    app({['score', '--model', str(rel['package']), str(inputs), '--out', str(out)]!r})\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'optimum') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(out.read_text("utf-8").splitlines()) == 3
