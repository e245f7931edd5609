"""The fused-kernel decision (care.model.fused): `auto` uses liger-kernel only where it runs (one CUDA process,
a known architecture, installed) and says why not otherwise; `liger` asked for by name where it cannot run is
refused, by `care train`'s preflight before any work. The kernels themselves need CUDA (Triton): the GPU
benchmark runs them (`benchmarks/gpu_pipeline.py`, docs/gpu.md)."""

from __future__ import annotations

import pytest

from care.errors import CareError
from care.model.fused import choose_fused
from care.params import Params

pytestmark = pytest.mark.timeout(300)  # a hang guard


def _params(kind: str) -> Params:
    return Params.model_validate({"train": {"fused_kernels": kind}})


def test_auto_runs_no_fused_kernel_on_cpu_and_says_why():
    fused = choose_fused(_params("auto"), "llama", "cpu", 1)
    assert fused.kind == "none" and fused.reason.startswith("auto: no CUDA device")


def test_auto_names_every_reason_it_cannot_fuse():
    fused = choose_fused(_params("auto"), "gpt2", "cuda", 2)
    assert fused.kind == "none"
    assert "architecture 'gpt2'" in fused.reason and "2 processes" in fused.reason


def test_none_is_none_and_liger_by_name_where_it_cannot_run_is_refused():
    assert choose_fused(_params("none"), "llama", "cuda", 1).kind == "none"
    with pytest.raises(CareError, match="train.fused_kernels=liger cannot run here: no CUDA device"):
        choose_fused(_params("liger"), "llama", "cpu", 1)


def test_care_train_refuses_liger_on_cpu_before_any_work(run_cli, tmp_path):
    result = run_cli("train", "--params", "params.ci.yaml", "--metrics-dir", tmp_path / "m", "--plots-dir",
                     tmp_path / "p", "--set", f"release.out={tmp_path / 'r'}", "--set", "train.fused_kernels=liger")
    assert result.exit_code != 0 and "train.fused_kernels=liger cannot run here" in result.output, result.output
    assert "Traceback" not in result.output
    assert not any((tmp_path / name).exists() for name in ("m", "p", "r"))
