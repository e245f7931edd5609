"""scripts/retrain.sh end to end, as the retrain workflow runs it, in a fresh clone on the CI-sized params.

A `git clone` of this repository's HEAD, `params.yaml` replaced by `params.ci.yaml`, `dvc pull`, then
`bash scripts/retrain.sh` with GITHUB_STEP_SUMMARY set: the real validation, the real `dvc repro` (train,
gate, release, registration into a throw-away ZenML store) and the metrics summary. The clone's own code
runs (PYTHONPATH), with this environment's packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zenml_env import clean_subprocess_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retrain_script_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    missing = [name for name in ("dvc.yaml", "params.ci.yaml") if not (clone / name).is_file()]
    if missing:
        pytest.skip(f"HEAD has no {' or '.join(missing)} yet: nothing to retrain in a fresh clone")
    shutil.copyfile(clone / "params.ci.yaml", clone / "params.yaml")

    zenml_root = tmp_path / "zenml"
    (zenml_root / "repo").mkdir(parents=True)
    env = clean_subprocess_env(zenml_root)
    env.pop("CARE_PUSH", None)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(clone),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
    )

    def run(*cmd: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)

    pull = run(sys.executable, "-m", "dvc", "pull", "--quiet", "data.dvc", "base.dvc")
    assert pull.returncode == 0, pull.stdout[-3000:] + pull.stderr[-3000:]

    result = run("bash", "scripts/retrain.sh", timeout=540)

    log = result.stdout[-6000:] + result.stderr[-6000:]
    assert result.returncode == 0, log
    report = json.loads((clone / "metrics" / "validation.json").read_text("utf-8"))
    assert report["valid"] is True and report["n_problems"] == 0
    summary = (tmp_path / "summary.md").read_text("utf-8")
    assert summary.startswith("## CARE retrain: metrics")
    assert "Changes since" in summary or "No previous commit" in summary
    assert "|" in summary, summary  # a markdown table of metrics
    status = run(sys.executable, "-m", "dvc", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout

    listing = run(sys.executable, "-m", "care_cli.main", "models", "list", "--json")
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert [v["stage"] for v in json.loads(listing.stdout)].count("staging") == 1
    assert (clone / "release" / "manifest.json").is_file()

    again = run(sys.executable, "-m", "dvc", "repro", timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Data and pipelines are up to date" in again.stdout, again.stdout[-3000:]
