"""Registry races (issue 14, item 1): promotion is atomic across processes, readers survive a damaged store.

- Two real `care models promote V --stage production` processes released at the same instant, three rounds:
  each pair holds two candidates that both beat the current holder but are each worse than the other on one
  dimension. Decided one after the other (the promotion lock), exactly one wins and the other is refused as
  worse than the new holder; production has one holder. Without the lock both passed the check.
- A store that already has two production holders (made with SQL, as a race or another tool would leave it):
  `models show --stage`, `models pull --stage`, `models list` and a plain promote refuse with one line naming
  the versions (list still prints the table); `promote V --force` repairs it.
- A writer that ignores the lock and moves a version during our promotion: our move is rolled back, refused.
- The lock: a held one makes a promotion wait and then refuse; one left by a crashed promotion is taken over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_registry import make_package
from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)

pytestmark = pytest.mark.timeout(600)

ROUNDS = 3
WORKER = r"""
import json, os, sys, time
from pathlib import Path
import zenml_registry.client  # noqa: F401  (imported before the start signal: only the promotion races)
from care_cli.main import app
from zenml.client import Client
Client().list_models(size=1)
who, rounds, where = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
(where / f"ready-{who}").touch()
for k, (model, version) in enumerate(rounds):
    while not (where / f"go-{k}").exists():
        time.sleep(0.002)
    try:
        app(["models", "promote", str(version), "--stage", "production", "--model-name", model])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    (where / f"done-{k}-{who}").write_text(str(code))
"""


def _production(model: str) -> list[int]:
    from zenml_registry.client import list_versions

    return [r["version"] for r in list_versions(model) if r["stage"] == "production"]


def _metrics(task: float, bond: float) -> dict:
    return {"Task": (task, 1.0), "Bond": (bond, 1.0), "Goal": (0.5, 1.0)}


def _register(tmp_path: Path, model: str, tag: str, per_dim: dict) -> int:
    """A package whose CV means per dimension are (pearson, mse) as given."""
    from care.release.manifest import write_manifest
    from zenml_registry.client import register_package

    d = make_package(tmp_path / f"{model}-{tag}")
    manifest = json.loads((d / "manifest.json").read_text("utf-8"))
    manifest["cv"]["mean"] = {dim: {"pearson": r, "spearman": r, "mse": m} for dim, (r, m) in per_dim.items()}
    write_manifest(d, {k: v for k, v in manifest.items() if k != "files"})
    return register_package(d, model)


def test_concurrent_promotions_are_decided_one_after_the_other(zenml_store, tmp_path):
    from zenml_registry.client import promote

    rounds, pairs = [], []
    for k in range(ROUNDS):
        model = f"race-{k}"
        holder = _register(tmp_path, model, "holder", _metrics(0.3, 0.3))
        a = _register(tmp_path, model, "a", _metrics(0.6, 0.4))  # better than the holder everywhere, but each
        b = _register(tmp_path, model, "b", _metrics(0.4, 0.6))  # worse than the other on one dimension
        promote(holder, "production", model)
        pairs.append((model, holder, a, b))
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**zenml_store.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ZENML_STORE_", "ZENML_SERVER"))}, **env}
    procs = {}
    for who, index in (("a", 2), ("b", 3)):
        rounds = [(p[0], p[index]) for p in pairs]
        procs[who] = subprocess.Popen([sys.executable, "-c", WORKER, who, json.dumps(rounds), str(sync)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        outs = _release_rounds(procs, sync)
    finally:
        for p in procs.values():  # a failed round never leaves a worker waiting for its signal
            if p.poll() is None:
                p.kill()
    text = "".join(o + e for o, e in outs.values())
    assert "Traceback" not in text, text[-2000:]
    for k, (model, holder, a, b) in enumerate(pairs):
        codes = {w: int((sync / f"done-{k}-{w}").read_text()) for w in procs}
        assert sorted(codes.values()) == [0, 1], (k, codes)
        winner = a if codes["a"] == 0 else b
        loser = b if winner == a else a
        assert _production(model) == [winner], (k, _production(model))
        assert f"version {loser} is worse than production version {winner}" in text
        from zenml_registry.client import show_version

        assert show_version(model, version=holder)["stage"] == "archived"


def _force_second_holder(client, model: str, version: int) -> None:
    """Put `version` in production beside the holder, as a lost race or another tool leaves a store."""
    from sqlmodel import Session, select
    from zenml.zen_stores.schemas import ModelSchema, ModelVersionSchema

    with Session(client.zen_store.engine) as session:
        model_id = session.exec(select(ModelSchema).where(ModelSchema.name == model)).one().id
        mv = session.exec(select(ModelVersionSchema).where(ModelVersionSchema.model_id == model_id)
                          .where(ModelVersionSchema.number == version)).one()
        mv.stage = "production"
        session.add(mv)
        session.commit()


def _release_rounds(procs: dict, sync: Path) -> dict:
    """Signal each round to both workers at once; their (stdout, stderr) when all rounds are done."""
    deadline = time.monotonic() + 300
    while not all((sync / f"ready-{w}").exists() for w in procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), "workers did not start"
        time.sleep(0.05)
    for k in range(ROUNDS):
        (sync / f"go-{k}").touch()  # both processes promote at the same instant
        while not all((sync / f"done-{k}-{w}").exists() for w in procs):
            failed = {w: p for w, p in procs.items() if p.poll() not in (None, 0)}
            assert not failed, {w: p.communicate()[1][-2000:] for w, p in failed.items()}
            assert time.monotonic() < deadline, "the promotions did not finish"
            time.sleep(0.02)
    outs = {w: p.communicate(timeout=120) for w, p in procs.items()}
    return outs


def test_readers_survive_a_store_with_two_production_holders(zenml_store, tmp_path, run_cli):
    from zenml_registry.client import promote

    model = "race-damaged"
    v1, v2, v3 = (_register(tmp_path, model, t, _metrics(0.5, 0.5)) for t in ("1", "2", "3"))
    promote(v1, "production", model)
    _force_second_holder(zenml_store.client, model, v2)
    assert sorted(_production(model)) == [v1, v2]
    need = f"has 2 versions in production ({v1}, {v2})"
    for args in (("show", "--stage", "production"), ("pull", "--stage", "production", "--out", tmp_path / "pulled"),
                 ("promote", str(v3), "--stage", "production")):
        result = run_cli("models", *args, "--model-name", model)
        assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
        lines = result.stderr.splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and need in lines[0] and "--force" in lines[0], result.output
    assert not (tmp_path / "pulled").exists()
    listed = run_cli("models", "list", "--model-name", model)
    assert listed.exit_code == 1 and need in listed.stderr and f"\n{v2}  " in listed.stdout  # table, then refusal
    repaired = run_cli("models", "promote", str(v3), "--stage", "production", "--force", "--model-name", model)
    assert repaired.exit_code == 0, repaired.output
    assert _production(model) == [v3]
    assert run_cli("models", "list", "--model-name", model).exit_code == 0


def test_a_writer_that_ignores_the_lock_makes_the_promotion_roll_back(zenml_store, tmp_path, monkeypatch):
    from zenml.client import Client

    from care.errors import CareError
    from zenml_registry.client import promote, show_version

    model = "race-bypass"
    v1, v2, v3 = (_register(tmp_path, model, t, _metrics(0.5, 0.5)) for t in ("1", "2", "3"))
    promote(v1, "production", model)
    promote(v2, "staging", model)
    real = Client.update_model_version

    def and_another_tool_too(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if kwargs.get("stage") == "production":
            _force_second_holder(self, model, v3)  # e.g. the dashboard, between our move and our check
        return out

    monkeypatch.setattr(Client, "update_model_version", and_another_tool_too)
    with pytest.raises(CareError, match="rolled back|moved back"):
        promote(v2, "production", model)
    monkeypatch.undo()
    assert show_version(model, version=v2)["stage"] == "staging"  # ours undone
    assert v2 not in _production(model)


def test_the_lock_waits_then_refuses_and_a_crashed_holders_lock_is_taken_over(zenml_store, tmp_path, monkeypatch):
    from sqlmodel import Session, select
    from zenml.zen_stores.schemas import TagSchema

    import zenml_registry.client as registry
    from care.errors import CareError
    from zenml_registry.lock import _lock_name, promotion_lock

    model = "race-lock"
    v1 = _register(tmp_path, model, "1", _metrics(0.5, 0.5))
    client = zenml_store.client
    lock = client.create_tag(name=_lock_name(model))  # another promotion holds it
    started = time.monotonic()
    with pytest.raises(CareError, match="another promotion holds the registry's promotion lock"):
        with promotion_lock(client, model, wait_s=0.5):
            pass
    assert time.monotonic() - started >= 0.5  # it waited its wait_s before refusing
    assert registry.show_version(model, version=v1)["stage"] is None
    with Session(client.zen_store.engine) as session:  # the holder crashed long ago
        tag = session.exec(select(TagSchema).where(TagSchema.id == lock.id)).one()
        tag.created = tag.created.replace(year=tag.created.year - 1)
        session.add(tag)
        session.commit()
    registry.promote(v1, "production", model)
    assert _production(model) == [v1]
    with pytest.raises(KeyError):
        client.get_tag(_lock_name(model), allow_name_prefix_match=False)  # released after use
