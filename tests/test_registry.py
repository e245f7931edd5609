"""The model registry (zenml_registry.client + care.registry.promotion + `care models ...`) on an isolated local store."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from pathlib import Path

import pytest
from zenml import step

from care.release.manifest import write_manifest
from care.registry.promotion import compare, decide_promotion, registry_metadata
from care.run.artifacts import ModelDir
from steps import ModelDirMaterializer
from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)


@step(enable_cache=False, output_materializers=ModelDirMaterializer)
def built_package(package_dir: str) -> ModelDir:
    """A package directory as the build step hands it on (a test stand-in for build_release)."""
    return ModelDir(package_dir, key="test-package")

SECRET_TEXT = "来访者说她今天迟到了因为不想来"  # stands for transcript / rationale text


def make_package(where: Path, pearson: float = 0.5, mse: float = 1.0, passed: bool = True,
                 weights: bytes | None = None, dims=("Task", "Bond", "Goal")) -> Path:
    where.mkdir(parents=True)
    (where / "model.onnx").write_bytes(weights if weights is not None else os.urandom(2048))
    (where / "tokenizer").mkdir()
    (where / "tokenizer" / "tokenizer.json").write_text('{"model": "bpe"}', "utf-8")
    (where / "instrument.yaml").write_text("name: wai-sr\n", "utf-8")
    (where / "README.md").write_text("# CARE release\n", "utf-8")
    mean = {d: {"pearson": pearson, "spearman": pearson, "mse": mse} for d in dims}
    std = {d: {"pearson": 0.05, "spearman": 0.05, "mse": 0.1} for d in dims}
    write_manifest(where, {
        "data_version": "md5-0123abcd", "git_commit": "a1b2c3d4e5", "params_digest": "f" * 64,
        "base_model": "tiny", "instrument": "wai-sr",
        "cv": {"mean": mean, "std": std, "n_folds": 5, "n_sessions": 40},
        "baselines": {"counselor": {d: {"pearson": 0.2, "mse": 1.4} for d in dims}},
        "gate": {"passed": passed, "failed": [] if passed else ["Task.pearson >= 0.9"],
                 "checks": [{"check": "Task.pearson >= 0.3", "dimension": "Task", "metric": "pearson",
                             "value": pearson, "threshold": 0.3, "verdict": "pass" if passed else "fail",
                             "note": SECRET_TEXT}]},
        "rationale_example": SECRET_TEXT,
        "sample_transcript": [{"speaker": "client", "text": SECRET_TEXT}],
    })
    return where


@pytest.fixture
def cli(run_cli):
    def _run(*args):
        return run_cli("models", *args)
    return _run


def _out(result) -> str:
    return result.output  # click >= 8.2: stdout and stderr together


def _zenml_tmp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "zenml-*")))


def _holders(model_name: str) -> dict[str, list[int]]:
    from zenml_registry.client import list_versions

    out: dict[str, list[int]] = {}
    for row in list_versions(model_name):
        out.setdefault(row["stage"], []).append(row["version"])
    return out


# ----------------------------------------------------------------------------------- pure rules


def test_registry_metadata_keeps_numbers_and_ids_only(tmp_path):
    manifest = json.loads((make_package(tmp_path / "p") / "manifest.json").read_text("utf-8"))
    meta = registry_metadata(manifest)
    assert SECRET_TEXT not in json.dumps(meta, ensure_ascii=False)
    assert meta["gate_passed"] is True
    assert meta["cv"]["mean"]["Task"] == {"pearson": 0.5, "spearman": 0.5, "mse": 1.0}
    assert meta["cv"]["std"]["Bond"]["mse"] == 0.1
    assert meta["baselines"]["counselor"]["Goal"]["pearson"] == 0.2
    assert meta["gate_checks"] == {"Task.pearson >= 0.3": {"value": 0.5, "threshold": 0.3, "passed": True}}
    assert {k: meta[k] for k in ("data_version", "git_commit", "base_model", "instrument")} == {
        "data_version": "md5-0123abcd", "git_commit": "a1b2c3d4e5", "base_model": "tiny", "instrument": "wai-sr"}
    assert "files" not in meta and "rationale_example" not in meta
    assert registry_metadata({"files": {}})["gate_passed"] is False  # no verdict: never promotable


def test_free_text_in_an_id_field_is_refused():
    from care.errors import CareError

    with pytest.raises(CareError) as exc:
        registry_metadata({"files": {}, "data_version": SECRET_TEXT + " more words"})
    assert SECRET_TEXT not in str(exc.value)


def test_comparison_rule():
    cur = {"gate_passed": True, "cv": {"mean": {"Task": {"pearson": 0.5, "mse": 1.0}}}}
    same = {"gate_passed": True, "cv": {"mean": {"Task": {"pearson": 0.5, "mse": 1.0}}}}
    lower_r = {"gate_passed": True, "cv": {"mean": {"Task": {"pearson": 0.49, "mse": 0.5}}}}
    higher_mse = {"gate_passed": True, "cv": {"mean": {"Task": {"pearson": 0.9, "mse": 1.01}}}}
    missing = {"gate_passed": True, "cv": {"mean": {}}}
    assert not compare(same, cur).worse
    assert compare(lower_r, cur).worse and compare(higher_mse, cur).worse and compare(missing, cur).worse
    assert not decide_promotion(lower_r, "production", cur).allowed
    assert decide_promotion(lower_r, "production", cur, force=True).allowed
    failed = dict(same, gate_passed=False)
    for stage in ("staging", "production"):
        assert not decide_promotion(failed, stage, None, force=True).allowed
        assert not decide_promotion(failed, stage, cur, force=True).allowed


# ------------------------------------------------------------------------------- registry on a store


def test_register_numbers_versions_and_stages_on_pass(zenml_store, tmp_path):
    from zenml_registry.client import promote_on_pass, register_package, show_version

    v1 = register_package(make_package(tmp_path / "p1"), "reg-a")
    v2 = register_package(make_package(tmp_path / "p2"), "reg-a")
    assert (v1, v2) == (1, 2)
    assert show_version("reg-a", version=1)["stage"] is None
    assert promote_on_pass(v1, "reg-a", "staging") == "staging"
    assert _holders("reg-a") == {"staging": [1], None: [2]}
    assert promote_on_pass(v2, "reg-a", "staging") == "staging"
    assert _holders("reg-a") == {"archived": [1], "staging": [2]}


def test_identical_package_is_stored_once(zenml_store, tmp_path):
    from zenml_registry.client import register_package, show_version

    weights = os.urandom(4096)
    a = make_package(tmp_path / "a", weights=weights)
    v1 = register_package(a, "reg-dedupe")
    v2 = register_package(a, "reg-dedupe")
    m1, m2 = (show_version("reg-dedupe", version=v)["metadata"] for v in (v1, v2))
    assert v2 == v1 + 1
    assert m1["package_sha256"] == m2["package_sha256"]
    assert m1["package_artifact_version_id"] == m2["package_artifact_version_id"]
    store = Path(zenml_store.client.active_stack.artifact_store.path) / "care-packages"
    assert [p.name for p in store.iterdir()].count(m1["package_sha256"]) == 1
    assert not list(store.glob("*.pkl")) and not list(store.rglob("*.pkl"))


def test_failed_gate_is_never_promotable(zenml_store, tmp_path, cli):
    from zenml_registry.client import promote_on_pass, register_package

    v = register_package(make_package(tmp_path / "bad", pearson=0.1, passed=False), "reg-fail")
    assert promote_on_pass(v, "reg-fail", "staging") is None
    for stage in ("staging", "production"):
        r = cli("promote", str(v), "--stage", stage, "--force", "--model-name", "reg-fail")
        assert r.exit_code == 1, _out(r)
        assert "failed its gate" in _out(r)
    assert _holders("reg-fail") == {None: [v]}


def test_production_needs_a_better_candidate_or_force(zenml_store, tmp_path, cli):
    from zenml_registry.client import register_package

    good = register_package(make_package(tmp_path / "good", pearson=0.5, mse=1.0), "reg-prod")
    worse = register_package(make_package(tmp_path / "worse", pearson=0.45, mse=0.9), "reg-prod")
    better = register_package(make_package(tmp_path / "better", pearson=0.6, mse=0.8), "reg-prod")
    r = cli("promote", str(good), "--stage", "production", "--model-name", "reg-prod")
    assert r.exit_code == 0, _out(r)

    r = cli("promote", str(worse), "--stage", "production", "--model-name", "reg-prod")
    assert r.exit_code == 1
    text = _out(r)
    assert "WORSE" in text and "pearson" in text and "0.4500" in text and "0.5000" in text
    assert _holders("reg-prod")["production"] == [good]

    r = cli("promote", str(worse), "--stage", "production", "--force", "--model-name", "reg-prod")
    assert r.exit_code == 0, _out(r)
    assert _holders("reg-prod") == {"archived": [good], "production": [worse], None: [better]}

    r = cli("promote", str(better), "--stage", "production", "--model-name", "reg-prod")
    assert r.exit_code == 0, _out(r)
    assert _holders("reg-prod") == {"archived": [good, worse], "production": [better]}


def test_one_holder_per_stage_after_repeated_promotions(zenml_store, tmp_path):
    from zenml_registry.client import promote, register_package

    versions = [register_package(make_package(tmp_path / f"p{i}", pearson=0.3 + 0.05 * i), "reg-many")
                for i in range(3)]
    for v in versions + versions[::-1]:
        promote(v, "production", "reg-many", force=True)
        promote(versions[(versions.index(v) + 1) % len(versions)], "staging", "reg-many")
        holders = _holders("reg-many")
        assert holders.get("production") == [v]
        assert len(holders.get("staging", [])) == 1


def _stored_dir(client, model_name: str, version: int) -> Path:
    from zenml_registry.client import show_version

    sha = show_version(model_name, version=version)["metadata"]["package_sha256"]
    return Path(client.active_stack.artifact_store.path) / "care-packages" / sha


def test_pull_verifies_and_leaves_nothing_on_failure(zenml_store, tmp_path, cli):
    from care.release.manifest import verify_package
    from zenml_registry.client import promote_on_pass, register_package

    before = _zenml_tmp_dirs()
    src = make_package(tmp_path / "src")
    v = register_package(src, "reg-pull")
    promote_on_pass(v, "reg-pull", "staging")

    out = tmp_path / "pulled" / "model"
    r = cli("pull", "--stage", "staging", "--out", str(out), "--model-name", "reg-pull")
    assert r.exit_code == 0, _out(r)
    verify_package(out)
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (src / "tokenizer" / "tokenizer.json").read_bytes()
    assert sorted(os.listdir(out.parent)) == ["model"]

    r = cli("pull", "--version", str(v), "--out", str(out), "--model-name", "reg-pull")
    assert r.exit_code == 1 and "already exists" in _out(r)  # never overwrites

    # tampered and missing files in the store, each on its own version
    tampered = register_package(make_package(tmp_path / "t"), "reg-pull")
    stored = _stored_dir(zenml_store.client, "reg-pull", tampered)
    (stored / "model.onnx").write_bytes(b"evil" + (stored / "model.onnx").read_bytes()[4:])
    missing = register_package(make_package(tmp_path / "m"), "reg-pull")
    (_stored_dir(zenml_store.client, "reg-pull", missing) / "README.md").unlink()
    bad_manifest = register_package(make_package(tmp_path / "bm"), "reg-pull")
    mpath = _stored_dir(zenml_store.client, "reg-pull", bad_manifest) / "manifest.json"
    mpath.write_text(mpath.read_text("utf-8").replace('"size": 2048', '"size": 2049'), "utf-8")

    for bad, why in ((tampered, "sha256"), (missing, "missing"), (bad_manifest, "manifest")):
        dest = tmp_path / f"bad{bad}" / "model"
        r = cli("pull", "--version", str(bad), "--out", str(dest), "--model-name", "reg-pull")
        assert r.exit_code == 1, _out(r)
        assert why in _out(r)
        assert not dest.exists()
        assert os.listdir(dest.parent) == []  # no temporary sibling left behind
    assert _zenml_tmp_dirs() <= before


def test_list_and_show_print_metadata_only(zenml_store, tmp_path, cli):
    from zenml_registry.client import promote_on_pass, register_package

    v = register_package(make_package(tmp_path / "p", pearson=0.52, mse=1.04), "reg-show")
    promote_on_pass(v, "reg-show", "staging")
    r = cli("list", "--model-name", "reg-show")
    assert r.exit_code == 0, _out(r)
    for field in ("version", "stage", "created", "key_metrics", "data_version", "staging", "md5-0123abcd",
                  "Task r=0.520 mse=1.040"):
        assert field in r.output
    r = cli("show", "--stage", "staging", "--model-name", "reg-show")
    assert r.exit_code == 0, _out(r)
    doc = json.loads(r.stdout)
    assert doc["version"] == v and doc["stage"] == "staging"
    meta = doc["metadata"]
    for key in ("cv", "baselines", "gate_passed", "gate_checks", "data_version", "git_commit", "params_digest",
                "base_model", "instrument", "package_sha256"):
        assert key in meta
    assert meta["cv"]["std"]["Goal"]["pearson"] == 0.05
    assert SECRET_TEXT not in r.output and "rationale" not in r.output and "transcript" not in r.output
    assert json.loads(cli("show", str(v), "--model-name", "reg-show").stdout) == doc
    r = cli("show", "--stage", "production", "--model-name", "reg-show")
    assert r.exit_code == 1 and "no stage production" in _out(r)


def test_register_inside_a_pipeline_uses_the_runs_model_version(zenml_store, tmp_path):
    from zenml import Model, pipeline

    from care.params import RegistryParams
    from care.run.documents import Gate
    from steps import register_release
    from zenml_registry.client import list_versions, register_package, show_version

    pkg = make_package(tmp_path / "p")
    passed = Gate(passed=True, checks=[], failed=[], not_applied=[], loosened=[])

    @pipeline(model=Model(name="reg-pipe"), enable_cache=False)
    def tiny_release(package_dir: str):
        register_release(package=built_package(package_dir=package_dir), gate=passed,
                         registry=RegistryParams(model_name="reg-pipe", stage_on_pass="staging"))

    run = tiny_release(package_dir=str(pkg))
    rows = list_versions("reg-pipe")
    assert [r["version"] for r in rows] == [1]  # the run's own version, numbered by ZenML
    assert rows[0]["stage"] is None  # staged by the driver, once the release is installed (run_training)
    assert run.model_version is not None and run.model_version.number == 1
    meta = show_version("reg-pipe", version=1)["metadata"]
    assert meta["gate_passed"] is True and meta["package_sha256"]
    assert register_package(pkg, "reg-pipe") == 2  # outside a run: a new version
