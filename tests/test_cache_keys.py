"""Cache keys are computed from what decides the artifact, including the source of every module involved:
editing a module the embedded base is built from (in a copy of the package) changes the build's digest, and
a fit depends on the base only through the base's own key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import care
from care.cache import source_modules

PACKAGE = Path(care.__file__).resolve().parent
KEY = ("from care.model.base_build import build_digest; from care.params import Params; "
       "from care.run.fits import fit_key; from care.run.artifacts import ModelDir; "
       "from care.run.data import DataRef; "
       "d = DataRef(path='x', sha256='0', limit=None, instrument='wai-sr', instrument_sha256='1', prompts_sha256='2', n_bytes=1, n_sessions=1, "
       "n_clients=1, n_with_counselor_ratings=0, n_with_rationales=0, languages=['zh']); "
       "print(build_digest(Params()), fit_key(d, Params().fit, ['s1'], ModelDir('b', 'b')))")


def _keys(root: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", KEY], cwd=root, env={"PYTHONPATH": str(root), "PATH": ""},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_base_build_digest_follows_the_modules_it_is_built_from():
    modules = source_modules("care.model.base_build")
    # found by following imports, not listed by hand: the synthetic corpus and the prompt texts included
    assert {"care.data.synth.phrases_zh", "care.data.synth.dialogue", "care.model.prompts", "care.model.tiny"} <= set(modules)
    assert "care.evaluation.metrics" not in modules


def test_editing_a_module_changes_the_keys_that_depend_on_it(tmp_path):
    def copy(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(PACKAGE, root / "care", ignore=shutil.ignore_patterns("__pycache__"))
        return root

    same, synth, metrics, wording = copy("same"), copy("synth"), copy("metrics"), copy("wording")
    zh = wording / "care" / "data" / "prompts" / "zh.yaml"
    zh.write_text(zh.read_text("utf-8").replace("刚刚结束一次咨询会谈", "刚刚结束一次会谈"), "utf-8")
    with open(synth / "care" / "data" / "synth" / "phrases_zh.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit to the corpus the tiny base is pretrained on\n")
    with open(metrics / "care" / "evaluation" / "metrics.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit that decides neither the base nor the fit\n")
    base_same, fit_same = _keys(same)
    base_synth, fit_synth = _keys(synth)
    base_metrics, fit_metrics = _keys(metrics)
    assert base_synth != base_same and fit_synth == fit_same  # the fit sees the base through its key only
    assert (base_metrics, fit_metrics) == (base_same, fit_same)
    assert _keys(wording)[0] != base_same  # the prompt wording is data, and the base is built from it
