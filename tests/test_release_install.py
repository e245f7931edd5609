"""A release is installed whole or not at all, and a version is kept in the registry only with its release.

`care.run.outputs.installing_release` replaces an earlier package that still verifies, moves a changed one aside
(`release.replaced-<time>`) and never deletes it, and puts the previous release back when the block fails.
`pipelines.training._install_and_stage` stages a registered version inside that block: a failed install or
staging leaves the previous release and removes the new version from the registry.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from care.errors import CareError
from care.release.manifest import verify_package, write_manifest
from care.release.package import FORMAT
from care.run import outputs as files
from care.run.documents import Registration
from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.timeout(300)


def _package(where: Path, tag: str, passed: bool = True) -> Path:
    where.mkdir(parents=True)
    (where / "model.onnx").write_bytes(os.urandom(512))
    (where / "README.md").write_text(f"# release {tag}\n", "utf-8")
    write_manifest(where, {"format": FORMAT, "data_version": f"test-{tag}", "instrument": "wai-sr",
                           "cv": {"mean": {"goal": {"pearson": 0.5, "mse": 1.0}}},
                           "gate": {"passed": passed, "checks": []}})
    return where


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def _install(package: Path, out: Path) -> files.Installed:
    with files.installing_release(package, out) as installed:
        return installed


def test_an_unchanged_release_is_replaced_and_a_changed_one_moved_aside_never_deleted(tmp_path):
    out = tmp_path / "release"
    p1, p2, p3 = (_package(tmp_path / f"p{i}", str(i)) for i in (1, 2, 3))
    assert _install(p1, out).replaced is None
    assert _install(p2, out).replaced is None and _files(out) == _files(p2)  # p1 verified: replaced
    (out / "README.md").write_text("my notes on this release\n", "utf-8")  # no longer what the tool wrote
    (out / "extra.txt").write_text("keep me\n", "utf-8")
    changed = _files(out)
    replaced = Path(_install(p3, out).replaced)
    assert _files(out) == _files(p3) and _files(replaced) == changed
    assert replaced.name.startswith("release.replaced-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p1", "p2", "p3", "release", replaced.name]


def test_a_failed_block_or_a_full_disk_puts_the_previous_release_back(tmp_path, monkeypatch):
    out = tmp_path / "release"
    p1, p2 = _package(tmp_path / "p1", "1"), _package(tmp_path / "p2", "2")
    _install(p1, out)
    with pytest.raises(RuntimeError):
        with files.installing_release(p2, out):
            assert _files(out) == _files(p2)
            raise RuntimeError("the registration failed")
    assert _files(out) == _files(p1)

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.shutil, "copyfile", full)
    with pytest.raises(CareError) as exc:
        _install(p2, out)
    assert str(exc.value) == f"{out}: cannot write (No space left on device)"
    assert _files(out) == _files(p1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p1", "p2", "release"]  # no temporary sibling left


def _params(out: Path, model: str):
    from care.params import load_params

    return load_params(None, [f"release.out={out}", f"registry.model_name={model}"])


def _stages(model: str) -> dict[int, str | None]:
    from zenml_registry.client import list_versions

    return {row["version"]: row["stage"] for row in list_versions(model)}


def test_a_version_is_kept_only_with_its_release_installed(zenml_store, tmp_path, monkeypatch):
    import zenml_registry.client as registry
    from pipelines.training import _install_and_stage
    from zenml_registry.client import register_package

    model, out = "install-rollback", tmp_path / "release"
    params = _params(out, model)

    def registered(tag: str) -> tuple[Path, Registration]:
        package = _package(tmp_path / tag, tag)
        return package, Registration(model=model, version=register_package(package, model), stage=None)

    p1, r1 = registered("v1")
    assert _install_and_stage(str(p1), r1, params, files) == (r1.model_copy(update={"stage": "staging"}), None)
    assert _stages(model) == {1: "staging"} and _files(out) == _files(p1)

    p2, r2 = registered("v2")  # the install fails: disk full
    real_copy = files.shutil.copyfile
    monkeypatch.setattr(files.shutil, "copyfile",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(CareError, match=f"cannot write .No space left on device.; version {r2.version} of "
                                        "install-rollback was removed from the registry"):
        _install_and_stage(str(p2), r2, params, files)
    monkeypatch.setattr(files.shutil, "copyfile", real_copy)
    assert _stages(model) == {1: "staging"} and _files(out) == _files(p1)

    p3, r3 = registered("v3")  # installed, then the staging fails: the release goes back too

    def busy(*a, **k):
        raise CareError("another promotion holds the registry's promotion lock")

    monkeypatch.setattr(registry, "promote_on_pass", busy)
    with pytest.raises(CareError, match=f"promotion lock; version {r3.version} of install-rollback was removed"):
        _install_and_stage(str(p3), r3, params, files)
    monkeypatch.undo()
    assert _stages(model) == {1: "staging"} and _files(out) == _files(p1)

    p4, r4 = registered("v4")
    _install_and_stage(str(p4), r4, params, files)
    assert _stages(model) == {1: "archived", r4.version: "staging"} and _files(out) == _files(p4)
    verify_package(out)
