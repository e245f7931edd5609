"""benchmarks/gpu_pipeline.py at the tiny shape on CPU: every stage runs the project's code and writes its
figures; the deadline watchdog writes what it has and exits 3. (On a GPU: docs/gpu.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pipeline.py"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=600)
    return proc, json.loads(out.read_text("utf-8")) if out.is_file() else {}


def test_tiny_pipeline_on_cpu_runs_every_stage(tmp_path):
    proc, figures = _run(tmp_path, "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = figures["stages"]
    assert {s: stages[s]["status"] for s in stages} == {s: "done" for s in
                                                         ("init", "train", "score", "merge", "export", "parity")}
    train = stages["train"]
    assert train["steps"] == 3 and train["sessions_per_step"] == 2 and train["packing"] == "session"
    assert train["gradient_checkpointing"] is True and train["tokens_per_s_after_first"] > 0
    assert train["fold_epoch_s_estimate"] > 0 and train["mfu"] is None  # no peak FLOP/s known for a CPU
    score = stages["score"]
    assert score["naive_generate"]["sessions_per_s"] > 0
    assert score["shared_cache_session_batch_2"]["max_expected_diff_vs_naive"] < 1e-4  # float32: same scores
    assert stages["merge"]["adapter_effect"] > 0 and stages["merge"]["max_logit_diff"] < 1e-4
    assert stages["export"]["dtype"] == "fp16" and stages["export"]["onnx_bytes"] > 0
    parity = stages["parity"]
    assert parity["passed"] and parity["providers"][0] == "CPUExecutionProvider" and parity["n_items"] == 24
    assert not (tmp_path / "work" / "base").exists()  # removed after the merge (disk)


def test_deadline_writes_the_figures_and_exits_3(tmp_path):
    proc, figures = _run(tmp_path, "--deadline-s", "0.2", "--work", str(tmp_path / "work"))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert figures["deadline_s"] == 0.2 and not any(s.get("status") == "done" for s in figures["stages"].values())
