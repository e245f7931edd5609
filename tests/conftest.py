"""Shared test fixtures: valid session dicts, JSONL files, and a CLI runner.

The helpers are plain functions (importable as ``from conftest import session_dict``) and fixtures
(``make_session``, ``write_jsonl``, ``run_cli``) so tests can use either style.
"""

from __future__ import annotations

import copy
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

WAI_ITEMS = [str(i) for i in range(1, 13)]

UNWRITABLE = Path("/sys/kernel")  # a directory nobody can create entries in, root included (sysfs)


def _refuses_entries(directory: Path) -> bool:
    try:
        os.rmdir(tempfile.mkdtemp(dir=directory))
        return False
    except OSError:
        return True


needs_sysfs = pytest.mark.skipif(not _refuses_entries(UNWRITABLE), reason="needs a directory that refuses new entries")

_BASE_SESSION: dict[str, Any] = {
    "session_id": "s0001",
    "client_id": "c001",
    "counselor_id": "t01",
    "language": "zh",
    "turns": [
        {"speaker": "counselor", "text": "你好，今天想聊些什么？"},
        {"speaker": "client", "text": "最近工作压力很大，晚上睡不好。"},
        {"speaker": "counselor", "text": "听起来这段时间很辛苦，能多说一些吗？"},
        {"speaker": "client", "text": "主要是和领导的沟通让我很焦虑。"},
    ],
    "client_ratings": {i: 4 for i in WAI_ITEMS},
    "counselor_ratings": {i: 3 for i in WAI_ITEMS},
    "rationales": {i: f"来访者在第{i}题的评分依据：咨询师回应了其感受。" for i in WAI_ITEMS},
}

_MISSING = object()


def session_dict(**overrides: Any) -> dict[str, Any]:
    """A valid wai-sr session as a plain dict; keyword arguments replace (or, given None, null) fields.

    Pass ``DROP`` as a value to remove a field entirely: ``session_dict(client_ratings=DROP)``.
    """
    row = copy.deepcopy(_BASE_SESSION)
    for key, value in overrides.items():
        if value is DROP:
            row.pop(key, None)
        else:
            row[key] = value
    return row


DROP = _MISSING


def write_jsonl_file(where: str | Path, rows: Iterable[dict | str], name: str = "sessions.jsonl") -> Path:
    """Write rows (dicts as JSON, strings verbatim) one per line to `where` (a directory or a .jsonl path)."""
    where = Path(where)
    path = where / name if where.is_dir() else where
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def corpus_rows(n: int, n_turns: int = 24, items: list[str] | None = None, seed: int = 0,
                language: str = "zh") -> list[dict[str, Any]]:
    """`n` valid, varied sessions (5 sessions per client), for tests that need more than one."""
    rng = random.Random(seed)
    items = items or WAI_ITEMS
    rows = []
    for k in range(n):
        turns = [{"speaker": ("counselor", "client")[t % 2], "text": f"第{t}句话，内容编号{rng.randrange(10**6)}。"}
                 for t in range(n_turns)]
        rows.append(session_dict(
            session_id=f"s{k:05d}", client_id=f"c{k // 5:04d}", language=language, turns=turns,
            client_ratings={i: rng.randint(1, 5) for i in items},
            counselor_ratings={i: rng.randint(1, 5) for i in items} if k % 10 else None,
            rationales={i: f"依据{rng.randrange(10**6)}：" + "咨询师的回应" * 20 for i in items},
        ))
    return rows


@pytest.fixture
def make_session():
    """Factory: ``make_session(session_id="s2", client_ratings=None)`` -> a session dict."""
    return session_dict


@pytest.fixture
def write_jsonl():
    """Helper: ``write_jsonl(tmp_path, rows, name="sessions.jsonl")`` -> the written Path."""
    return write_jsonl_file


@pytest.fixture
def run_cli(tmp_path_factory, monkeypatch):
    """Run the `care` CLI in-process: ``run_cli("validate", str(path))`` -> click Result (stdout, stderr).
    Its cache (`care validate` records passes there) is a fresh directory unless CARE_CACHE_DIR is set."""
    from typer.testing import CliRunner

    if not os.environ.get("CARE_CACHE_DIR"):
        monkeypatch.setenv("CARE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))

    from care_cli.main import app

    runner = CliRunner()

    def _run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return _run
