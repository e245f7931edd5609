"""The registry through a ZenML server: ZenML's own local server on loopback (`zenml login --local`).

Process A (the server owner's config, logged in to the server) registers packages; process B, with a fresh
config connected only by ZENML_STORE_URL, lists, shows, promotes and pulls them with the `care` CLI.
Needs the `zenml[server]` extras (fastapi, uvicorn, ...); skipped with the reason when they are missing or
the server does not come up within the time limit. The server is stopped in teardown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zenml_env import clean_subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
CMD_TIMEOUT_S = 120

REGISTER = r"""
import os, sys
from pathlib import Path
from care.release.manifest import write_manifest
from zenml_registry.client import register_package, promote_on_pass
out = []
for name, r in (("p1", 0.5), ("p2", 0.4)):
    d = Path(sys.argv[1]) / name
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.onnx").write_bytes(os.urandom(4096))
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    (d / "README.md").write_text("# release\n")
    write_manifest(d, {"data_version": "dv-1", "git_commit": "abc123", "base_model": "tiny",
                       "cv": {"mean": {"Task": {"pearson": r, "spearman": r, "mse": 1.0}}},
                       "gate": {"passed": True}})
    v = register_package(d, "care-server")
    out.append((v, promote_on_pass(v, "care-server", "staging")))
print("REGISTERED", out)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env, cwd, timeout=CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _care(env, cwd, *args) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "care_cli.main", "models", *args], env, cwd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = [m for m in ("fastapi", "uvicorn", "multipart", "jwt") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"ZenML server extras not installed (missing modules: {', '.join(missing)}); "
                    "install with: pip install 'zenml[server]==0.98.0'")
    root = tmp_path_factory.mktemp("zenml_server")
    owner_env = clean_subprocess_env(root / "owner")
    repo = Path(owner_env["ZENML_REPOSITORY_PATH"])
    repo.mkdir(parents=True)
    port = _free_port()
    pid_file = Path(owner_env["ZENML_CONFIG_PATH"]) / "zen_server" / "daemon" / "service.pid"
    zenml = [sys.executable, "-c", "from zenml.cli import cli; cli()"]
    try:
        started = _run([*zenml, "login", "--local", "--port", str(port), "--ip-address", "127.0.0.1"],
                       owner_env, repo, timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        started = None
    pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
    try:
        if started is None or started.returncode != 0:
            why = "timed out" if started is None else f"exit {started.returncode}: {(started.stderr or started.stdout)[-600:]}"
            pytest.skip(f"`zenml login --local` could not start a server on 127.0.0.1:{port} ({why})")
        client_env = clean_subprocess_env(root / "client")
        client_env["ZENML_STORE_URL"] = f"http://127.0.0.1:{port}"
        Path(client_env["ZENML_REPOSITORY_PATH"]).mkdir(parents=True)
        yield {"owner_env": owner_env, "client_env": client_env, "repo": repo, "root": root, "port": port}
    finally:
        try:
            _run([*zenml, "logout", "--local"], owner_env, repo, timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        if pid is not None:  # the daemon we started: wait for it, then make sure it is gone
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                time.sleep(3)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_register_in_one_process_and_pull_from_another(server, tmp_path):
    env_a, env_b = server["owner_env"], server["client_env"]
    script = tmp_path / "register.py"  # a file: ZenML derives its source root from the main module's file
    script.write_text(REGISTER, "utf-8")
    reg = _run([sys.executable, str(script), str(tmp_path / "pkgs")], env_a, server["repo"])
    assert reg.returncode == 0, reg.stderr[-2000:]
    assert "REGISTERED [(1, 'staging'), (2, 'staging')]" in reg.stdout

    cwd_b = env_b["ZENML_REPOSITORY_PATH"]
    listed = _care(env_b, cwd_b, "list", "--model-name", "care-server")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "archived" in listed.stdout and "staging" in listed.stdout and "dv-1" in listed.stdout

    shown = _care(env_b, cwd_b, "show", "--stage", "staging", "--model-name", "care-server")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert json.loads(shown.stdout)["version"] == 2

    # 2 is worse than nothing in production: allowed; then 1 (better) replaces it; 2 again is refused.
    assert _care(env_b, cwd_b, "promote", "2", "--stage", "production", "--model-name", "care-server").returncode == 0
    assert _care(env_b, cwd_b, "promote", "1", "--stage", "production", "--model-name", "care-server").returncode == 0
    refused = _care(env_b, cwd_b, "promote", "2", "--stage", "production", "--model-name", "care-server")
    assert refused.returncode == 1 and "WORSE" in refused.stdout

    out = tmp_path / "pulled"
    pulled = _care(env_b, cwd_b, "pull", "--stage", "production", "--out", str(out), "--model-name", "care-server")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "model.onnx", "tokenizer"]
    assert (out / "model.onnx").read_bytes() == (tmp_path / "pkgs" / "p1" / "model.onnx").read_bytes()
