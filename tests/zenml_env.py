"""An isolated ZenML store per test module (never the user's).

Usage in a test module::

    from zenml_env import zenml_store  # noqa: F401  (module-scoped fixture)

    def test_something(zenml_store):
        ...  # zenml_store.client is a Client on a fresh local SQLite store

`zenml_store` sets ZENML_CONFIG_PATH, ZENML_REPOSITORY_PATH and ZENML_LOCAL_STORES_PATH to fresh temp dirs,
removes any ZENML_STORE_* / ZENML_SERVER* variables inherited from the environment, resets ZenML's
GlobalConfiguration and Client singletons (so a store opened by an earlier module is not reused),
initialises a repository (`zenml init`) and restores everything afterwards.

`zenml_env_vars(root)` returns the same variables for a subprocess (e.g. a second CLI process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

_QUIET = {
    "ZENML_ANALYTICS_OPT_IN": "false",
    "ZENML_LOGGING_VERBOSITY": "WARN",
    "ZENML_ENABLE_RICH_TRACEBACK": "false",
    "AUTO_OPEN_DASHBOARD": "false",
    "ZENML_AUTO_OPEN_DASHBOARD": "false",
}
_INHERITED_PREFIXES = ("ZENML_STORE_", "ZENML_SERVER")


def zenml_env_vars(root: str | Path) -> dict[str, str]:
    """The environment variables that put ZenML's config, repository and local stores under `root`."""
    root = Path(root)
    return {
        "ZENML_CONFIG_PATH": str(root / "config"),
        "ZENML_REPOSITORY_PATH": str(root / "repo"),
        "ZENML_LOCAL_STORES_PATH": str(root / "config" / "local_stores"),
        **_QUIET,
    }


def clean_subprocess_env(root: str | Path) -> dict[str, str]:
    """os.environ without inherited ZenML store settings, plus `zenml_env_vars(root)`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
    env.update(zenml_env_vars(root))
    return env


def reset_zenml_singletons() -> None:
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    Client._reset_instance()
    GlobalConfiguration._reset_instance()


@dataclass
class ZenmlStore:
    root: Path
    env: dict[str, str]

    @property
    def client(self):
        from zenml.client import Client

        return Client()


@pytest.fixture(scope="module")
def zenml_store(tmp_path_factory) -> Iterator[ZenmlStore]:
    root = tmp_path_factory.mktemp("zenml")
    env = zenml_env_vars(root)
    mp = pytest.MonkeyPatch()
    try:
        for key in list(os.environ):
            if key.startswith(_INHERITED_PREFIXES):
                mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        (root / "repo").mkdir(parents=True, exist_ok=True)
        reset_zenml_singletons()
        from zenml.client import Client

        Client.initialize(root=root / "repo")
        reset_zenml_singletons()
        yield ZenmlStore(root=root, env=env)
    finally:
        reset_zenml_singletons()
        mp.undo()


def care_world(base: Path) -> dict[str, str]:
    """The environment of a `care` subprocess with its own ZenML store and cache under `base`, one thread."""
    env = clean_subprocess_env(base / "zenml")
    env.update({"CARE_CACHE_DIR": str(base / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env
