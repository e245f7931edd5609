"""benchmarks/gpu_pipeline.py at the tiny shape on CPU: every stage runs the project's code and writes its
figures; the deadline watchdog writes what it has and exits 3. (On a GPU: docs/gpu.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pipeline.py"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--shape", "tiny", "--device", "cpu", "--out", str(out),
                           *args], capture_output=True, text=True, timeout=600)
    return proc, json.loads(out.read_text("utf-8")) if out.is_file() else {}


@pytest.mark.slow
def test_tiny_pipeline_on_cpu_runs_every_stage(tmp_path):
    proc, figures = _run(tmp_path, "--work", str(tmp_path / "work"), "--variants", "default,before",
                         "--profile-out", str(tmp_path / "profile.txt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = figures["stages"]
    assert {s: stages[s]["status"] for s in stages} == {s: "done" for s in (
        "init", "train", "profile", "equivalence", "score", "merge", "export", "parity")}
    variants = stages["train"]["variants"]
    assert set(variants) == {"default", "before"}
    default, before = variants["default"], variants["before"]
    # the real preset's resolved recipe: 4 whole sessions a step, no dropout, decided by memory (a CPU has room)
    assert default["sessions_per_step"] == 4 and default["gradient_checkpointing"] is False
    assert default["sessions_per_forward"] == 4 and default["memory"]["estimate_gib"] > 0
    assert before["gradient_checkpointing"] is True and before["sessions_per_forward"] == 1
    for row in (default, before):
        assert row["tokens_per_s_after_first"] > 0 and row["fold_epoch_s_estimate"] > 0
        assert row["mfu"] is None  # no peak FLOP/s known for a CPU
    assert stages["profile"]["operator_calls"] > 0 and (tmp_path / "profile.txt").read_text().strip()
    equivalence = stages["equivalence"]
    assert equivalence["two_sessions_one_forward_vs_one_by_one"]["gradients"] < 1e-5
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
