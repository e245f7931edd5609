"""The lock files (requirements/{cpu,gpu}.lock, scripts/lock.py): compiled from today's pyproject.toml (a changed
dependency is caught), every package pinned with hashes and satisfying pyproject's requirements, the CPU torch
hashed as the local wheel it is, and this environment installed from the lock, nothing more."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lock():
    spec = importlib.util.spec_from_file_location("care_lock_script", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_locks_are_compiled_from_todays_pyproject(lock):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "lock.py"), "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for flavor in ("pip", *lock.FLAVORS):
        assert lock.recorded_digest(flavor) == lock.inputs_digest(flavor)
    assert lock.pins("pip") == {"pip": lock.PIP.split("==")[1]}


def test_a_changed_dependency_fails_the_check(lock, tmp_path, monkeypatch):
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    for old, new in (('"peft==0.21.2"', '"peft==0.21.3"'), ('"onnxruntime-gpu==1.31.1"',
                                                             '"onnxruntime-gpu==1.31.2"')):
        assert old in text
        changed = tmp_path / "pyproject.toml"
        changed.write_text(text.replace(old, new), "utf-8")
        differs = {f for f in lock.FLAVORS if lock.inputs_digest(f, changed) != lock.recorded_digest(f)}
        assert differs == ({"cpu", "gpu"} if "peft" in old else {"gpu"})
    monkeypatch.setattr(lock, "inputs_digest", lambda flavor, pyproject=None: "0" * 64)
    assert lock.check(["cpu"]) == 1  # set-up stops here, before installing anything


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_every_package_is_pinned_with_hashes_and_fits_pyproject(lock, flavor):
    text = lock.lock_path(flavor).read_text("utf-8")
    entries = [block for block in text.split("\n") if block and not block.startswith((" ", "#"))]
    assert len(entries) > 150
    for entry in entries:
        assert "==" in entry and entry.endswith("\\"), entry  # pinned, and a hash follows
    blocks = text.replace("\\\n", " ").splitlines()
    for block in blocks:
        if block and not block.startswith((" ", "#")):
            assert "--hash=sha256:" in block, block
    pins = lock.pins(flavor)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    wanted = project["dependencies"] + [r for e in lock.FLAVORS[flavor]["extras"]
                                        for r in project["optional-dependencies"][e]]
    for line in wanted:
        req = Requirement(line)
        name = lock.normalise(req.name)
        assert name in pins, f"{req.name} is not in {flavor}.lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (line, pins[name])
    other = "onnxruntime" if flavor == "gpu" else "onnxruntime-gpu"
    assert other not in pins  # never both


def test_cpu_torch_is_the_local_cpu_wheel(lock):
    pins = lock.pins("cpu")
    assert pins["torch"].endswith("+cpu") and not lock.pins("gpu")["torch"].endswith("+cpu")
    wheels = [Path(d) / f"torch-{pins['torch']}-cp311-cp311-manylinux_2_28_x86_64.whl" for d in lock._find_links()]
    found = [w for w in wheels if w.is_file()]
    if not found:
        pytest.skip("this machine's pip has no find-links folder holding the CPU torch wheel")
    digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
    block = lock.lock_path("cpu").read_text("utf-8").split(f"torch=={pins['torch']}", 1)[1].split("# via", 1)[0]
    assert f"--hash=sha256:{digest}" in block


def test_this_environment_is_installed_from_the_lock(lock):
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("onnxruntime-gpu")
        flavor = "gpu"
    except PackageNotFoundError:
        flavor = "cpu"
    wrong = {}
    for name, pinned in lock.pins(flavor).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed is None or Version(installed) != Version(pinned):
            wrong[name] = (pinned, installed)
    assert not wrong, wrong
    assert lock.extraneous(flavor) == []
