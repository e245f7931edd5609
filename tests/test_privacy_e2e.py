"""Privacy, end to end: client text never leaves the data it came in, and what the pipeline writes is private.

A CI-sized synthetic corpus (`care synth`) gets unique markers (random ASCII and rare CJK) planted in every
session's transcript, rationales and context; part of it is added with `care annotations add`. Then the
whole pipeline runs in subprocesses, each in an isolated world (its own cwd, HOME, TMPDIR, ZenML store,
CARE cache and DVC site cache): validate, train (cross-validation, gate, final fit, ONNX release, register
to staging), `care models list/show/pull`, `care score` (to a file and to stdout), plus the refusal paths
of `care validate` and `care score` on marked invalid input and two unexpected failures (an exception
raised inside scoring, and inside a pipeline step) whose tracebacks reach stderr and the ZenML store.

Proved:
- no marker appears in any file the run wrote (metrics, plots and plot data, reports, the release and the
  pulled package, the CARE cache, the ZenML store: SQLite DB values and the artifact store with its logs,
  DVC files, HOME and TMPDIR leftovers) nor in any captured stdout/stderr. Searched as UTF-8, UTF-16
  (LE/BE), JSON `\\uXXXX` escapes, Python bytes-repr escapes, ASCII case-insensitively, and marker halves
  (a clipped quote). Model weights and tokenizer files are searched too: the tiny tokenizer is trained on a
  separate synthetic corpus, never on the training data. Left out are only the inputs themselves (`data/`,
  the DVC cache that stores them, the test's own input files);
- every file and directory the pipeline wrote is not world-readable (`care` sets umask 077 in every
  command, care.fsutil.private_umask).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from zenml_env import clean_subprocess_env

ROOT = Path(__file__).resolve().parents[1]
CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]
# `care` with one library function replaced by one that raises (an unexpected error, not a CareError), at a
# point where the caller's local variables hold client text: the traceback must not show them.
FAILING_CARE = [sys.executable, "-c", """
import importlib, os
module, name = os.environ["CARE_TEST_FAIL"].split(":")
def fail(*args, **kwargs):
    raise RuntimeError("simulated unexpected failure")
setattr(importlib.import_module(module), name, fail)
from care_cli.main import app
app()
"""]
DVC = [sys.executable, "-m", "dvc"]
N_SESSIONS = 60  # params.ci.yaml: data.limit
N_ADDED = 10  # of them, added with `care annotations add`
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _ascii_marker(tag: str) -> str:
    # Non-hex letters around the random part: no half of it can turn up inside a hex digest by chance.
    return f"ZQX{tag}{secrets.token_hex(4)}KMW{secrets.token_hex(4)}RVJ"


def _cjk_marker() -> str:
    # CJK Extension A: rare characters that no synthetic phrase (and so no tiny-tokenizer merge) contains.
    rng = random.Random(secrets.randbits(64))
    return "".join(chr(rng.randrange(0x3400, 0x4DB6)) for _ in range(6))


MARKERS = {
    "transcript": (_ascii_marker("T"), _cjk_marker()),
    "rationale": (_ascii_marker("R"), _cjk_marker()),
    "context": (_ascii_marker("C"), _cjk_marker()),
}
ALL_MARKERS = [m for pair in MARKERS.values() for m in pair]


def _plant(row: dict) -> dict:
    """Markers into the first and the last client turn (the end survives truncation), every rationale
    (at the start: targets are clipped at their end) and the context. The row stays valid."""
    t_ascii, t_cjk = MARKERS["transcript"]
    r_ascii, r_cjk = MARKERS["rationale"]
    c_ascii, c_cjk = MARKERS["context"]
    client_turns = [i for i, t in enumerate(row["turns"]) if t["speaker"] == "client"]
    for i in {client_turns[0], client_turns[-1]}:
        row["turns"][i]["text"] += f" {t_ascii}，{t_cjk}。"
    row["rationales"] = {k: f"{r_ascii} {r_cjk}：{v}" for k, v in row["rationales"].items()}
    row["context"] = f"{c_ascii} 来访者自述：{c_cjk}"
    return row


# ---------------------------------------------------------------------------------------------- scanning


def _needles() -> list[tuple[str, bytes, bool]]:
    """(what, bytes to find, case-insensitive) for every marker, its halves and their encodings."""
    out = []
    for marker in ALL_MARKERS:
        half = len(marker) // 2
        parts = ((marker, marker), (marker[:half], f"{marker}[:{half}]"), (marker[half:], f"{marker}[{half}:]"))
        for part, what in parts:
            forms = {
                "utf-8": part.encode("utf-8"),
                "utf-16-le": part.encode("utf-16-le"),
                "utf-16-be": part.encode("utf-16-be"),
                "json \\u": json.dumps(part, ensure_ascii=True)[1:-1].encode("ascii"),
                "json \\U": "".join(c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in part).encode("ascii"),
                "bytes repr": repr(part.encode("utf-8"))[2:-1].encode("ascii"),
            }
            seen = set()
            for form, needle in forms.items():
                if needle not in seen:
                    seen.add(needle)
                    out.append((f"{what!r} as {form}", needle, part.isascii()))
    return out


NEEDLES = _needles()


def _sqlite_values(path: Path, scratch: Path) -> bytes:
    """Every text and blob value of every table (a value spilling over SQLite pages is whole here)."""
    copy = scratch / "db-copy.sqlite"
    shutil.copyfile(path, copy)
    for suffix in ("-wal", "-journal"):
        if Path(str(path) + suffix).exists():
            shutil.copyfile(str(path) + suffix, str(copy) + suffix)
    con = sqlite3.connect(copy)
    chunks = []
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, str):
                        chunks.append(value.encode("utf-8", "surrogatepass"))
                    elif isinstance(value, bytes):
                        chunks.append(value)
    finally:
        con.close()
        for p in scratch.glob("db-copy.sqlite*"):
            p.unlink()
    return b"\n".join(chunks)


def _views(path: Path, scratch: Path) -> list[tuple[str, bytes]]:
    """The file's bytes, plus what a compressed or database file holds."""
    data = path.read_bytes()
    views = [("raw", data)]
    if data.startswith(b"\x1f\x8b"):
        views.append(("gunzip", gzip.decompress(data)))
    elif data.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as zf:
            views += [(f"zip:{n}", zf.read(n)) for n in zf.namelist()]
    elif data.startswith(b"SQLite format 3\x00"):
        views.append(("sqlite values", _sqlite_values(path, scratch)))
    return views


def _hits(blob: bytes) -> list[str]:
    lowered = None
    found = []
    for what, needle, ascii_only in NEEDLES:
        if ascii_only:
            lowered = blob.lower() if lowered is None else lowered
            if needle.lower() in lowered:
                found.append(what)
        elif needle in blob:
            found.append(what)
    return found


def _files(root: Path, skip: set[Path]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        out += [here / f for f in filenames if here / f not in skip and (here / f).is_file()
                and not (here / f).is_symlink()]
    return out


# ---------------------------------------------------------------------------------------------- the run


class World:
    def __init__(self, base: Path):
        self.base = base
        self.repo = base / "repo"
        self.inputs = base / "inputs"  # the test's own marked input files (not scanned)
        for d in (self.repo, self.inputs, base / "home", base / "tmp"):
            d.mkdir(parents=True)
        self.env = clean_subprocess_env(base / "zenml")
        self.env.update({
            "CARE_CACHE_DIR": str(base / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "HOME": str(base / "home"), "TMPDIR": str(base / "tmp"), "XDG_CACHE_HOME": str(base / "home" / ".cache"),
            "XDG_CONFIG_HOME": str(base / "home" / ".config"), "MPLCONFIGDIR": str(base / "home" / "mpl"),
            "DVC_SITE_CACHE_DIR": str(base / "dvc-site"), "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
        })
        self.outputs: list[tuple[str, str]] = []  # (command, stdout + stderr) of every command

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=900)
        self.outputs.append((" ".join(args), proc.stdout + proc.stderr))
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        return proc

    def care(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(*CARE, *args, check=check)

    def failing_care(self, where: str, *args: str) -> subprocess.CompletedProcess:
        self.env["CARE_TEST_FAIL"] = where
        try:
            proc = self.run(*FAILING_CARE, *args, check=False)
        finally:
            del self.env["CARE_TEST_FAIL"]
        assert proc.returncode != 0 and "RuntimeError" in proc.stdout + proc.stderr, proc.stderr[-3000:]
        return proc


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("privacy"))
    ci = yaml.safe_load((ROOT / "params.ci.yaml").read_text("utf-8"))
    ci["model"]["tiny_base"]["path"] = str(ROOT / "base" / "tiny")  # the shipped base, outside this world
    params = str(w.base / "params.ci.yaml")
    Path(params).write_text(yaml.safe_dump(ci), "utf-8")
    os.chmod(params, 0o600)

    # A DVC-tracked repository holding 50 marked sessions; 10 more marked sessions come in through intake.
    w.run("git", "init", "-q")
    w.run(*DVC, "init", "-q")
    w.care("synth", "--out", str(w.inputs / "synth"), "--sessions", str(N_SESSIONS), "--seed", "11")
    rows = [_plant(r) for r in _rows(w.inputs / "synth" / "sessions.jsonl")]
    (w.repo / "data").mkdir()
    _write_rows(w.repo / "data" / "sessions.jsonl", rows[:-N_ADDED])
    w.run(*DVC, "add", "-q", "data")
    _write_rows(w.inputs / "new.jsonl", rows[-N_ADDED:])
    w.care("annotations", "add", str(w.inputs / "new.jsonl"), "--data", "data")

    # Refusals on marked invalid input: messages name file, line, session and field only.
    bad = [dict(rows[0], session_id="bad1", turns=[{"speaker": MARKERS["transcript"][0], "text": "x"}]),
           dict(rows[1], session_id="bad2", client_ratings={**rows[1]["client_ratings"], "3": MARKERS["rationale"][1]}),
           dict(rows[2], session_id="bad3", extra_field=MARKERS["context"][0])]
    _write_rows(w.inputs / "bad.jsonl", bad)
    with open(w.inputs / "bad.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"session_id": "bad4", "turns": [{"text": "' + MARKERS["transcript"][1] + '"\n')
    assert w.care("validate", str(w.inputs / "bad.jsonl"), "--report", "metrics/bad-report.json",
                  check=False).returncode == 1

    w.care("validate", "data/sessions.jsonl", "--report", "metrics/validation.json")
    w.care("train", "--params", params)
    w.care("models", "list", "--json", "--params", params)
    w.care("models", "show", "--stage", "staging", "--params", params)
    w.care("models", "pull", "--stage", "staging", "--out", str(w.base / "pulled"), "--params", params)
    _write_rows(w.inputs / "score.jsonl", rows[:3])
    w.care("score", "--model", str(w.base / "pulled"), str(w.inputs / "score.jsonl"),
           "--out", str(w.base / "scores.jsonl"))
    w.care("score", "--model", str(w.base / "pulled"), str(w.inputs / "score.jsonl"))  # to stdout
    assert w.care("score", "--model", str(w.base / "pulled"), str(w.inputs / "bad.jsonl"), check=False).returncode == 1

    # Unexpected failures: inside scoring (the command's locals hold the sessions) and inside a pipeline step
    # (aggregate_cv's locals hold every session; ZenML records the failure in its store and logs).
    w.failing_care("care.evaluation.readout:iter_scores", "score", "--model", str(w.base / "pulled"),
                   str(w.inputs / "score.jsonl"))
    failed = w.base / "failed-run"
    w.failing_care("care.evaluation.plots:write_plots", "train", "--params", params, "--no-release",
                   "--metrics-dir", str(failed / "metrics"), "--plots-dir", str(failed / "plots"))
    return w


def test_the_run_covered_every_stage(world):
    """The markers reached the pipeline: planted in every session, trained on, released, registered, scored."""
    data = (world.repo / "data" / "sessions.jsonl").read_text("utf-8")
    assert all(m in data for m in ALL_MARKERS)
    assert len(_rows(world.repo / "data" / "sessions.jsonl")) == N_SESSIONS
    cv = json.loads((world.repo / "metrics" / "cv_detail.json").read_text("utf-8"))
    assert cv["n_sessions"] == N_SESSIONS and cv["rationale_quality"]["n_pairs"] > 0
    assert json.loads((world.repo / "release" / "manifest.json").read_text("utf-8"))["gate"]["passed"] is True
    assert (world.base / "pulled" / "manifest.json").is_file()
    assert len(_rows(world.base / "scores.jsonl")) == 3
    assert any(Path(p).name == "zenml.db" for p in world.base.rglob("*.db"))
    stages = [cmd for cmd, _ in world.outputs]
    assert any("registered care-alliance version 1 in staging" in out for _, out in world.outputs), stages


def test_the_scan_finds_every_form(world, tmp_path):
    """Positive control: the search sees the markers where they are (the data) and in every encoding and
    container it claims to cover, so a clean scan means something."""
    in_data = _hits((world.repo / "data" / "sessions.jsonl").read_bytes())
    assert {m for m in ALL_MARKERS if any(w.startswith(f"{m!r} as ") for w in in_data)} == set(ALL_MARKERS)
    for m in ALL_MARKERS:
        for blob in (m.encode("utf-16-le"), m.encode("utf-16-be"), json.dumps(m).encode(), repr(m.encode()).encode(),
                     m.lower().encode(), m[: len(m) // 2].encode(), m[len(m) // 2:].encode("utf-16-le")):
            assert _hits(b"..." + blob + b"..."), (m, blob)
    gz = tmp_path / "x.log.gz"
    gz.write_bytes(gzip.compress(ALL_MARKERS[1].encode()))
    db = tmp_path / "x.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (v TEXT)")
    con.execute("INSERT INTO t VALUES (?)", ("x" * 4090 + ALL_MARKERS[3] + "y" * 9000,))  # spills over pages
    con.commit()
    con.close()
    for path in (gz, db):
        assert any(_hits(blob) for view, blob in _views(path, tmp_path) if view != "raw"), path
    refusals = "\n".join(out for cmd, out in world.outputs if " validate " in f" {cmd} " and "bad.jsonl" in cmd)
    assert "session=bad1 field=turns[0].speaker" in refusals and "field=client_ratings.3" in refusals
    assert "unknown field (its name is not shown)" in refusals and "malformed JSON" in refusals
    assert "extra_field" not in refusals  # an unknown field is named by its position (field=key#N)


def test_no_marker_in_any_file_or_output(world, tmp_path):
    skip = {world.repo / "data", world.repo / ".dvc" / "cache", world.inputs}
    files = _files(world.base, skip)
    assert len(files) > 50  # the scan saw the run's outputs, not an empty tree
    scanned = {p.relative_to(world.base).parts[0] for p in files}
    assert {"repo", "cache", "zenml", "pulled", "home"} <= scanned, scanned
    leaks = []
    for path in files:
        for view, blob in _views(path, tmp_path):
            for what in _hits(blob):
                leaks.append(f"{path.relative_to(world.base)} ({view}): {what}")
    for cmd, out in world.outputs:
        for what in _hits(out.encode("utf-8", "surrogatepass")):
            leaks.append(f"output of `{cmd}`: {what}")
    assert not leaks, "client text leaked:\n" + "\n".join(leaks[:50])


def test_pipeline_outputs_are_not_world_readable(world):
    trees = [world.repo / "metrics", world.repo / "plots", world.repo / "release",
             world.base / "cache", world.base / "zenml", world.base / "pulled", world.base / "scores.jsonl",
             world.inputs / "synth"]
    readable, n = [], 0
    for tree in trees:
        assert tree.exists(), tree
        for dirpath, dirnames, filenames in os.walk(tree) if tree.is_dir() else [(str(tree.parent), [], [tree.name])]:
            entries = [Path(dirpath)] if tree.is_dir() else []
            entries += [Path(dirpath) / name for name in dirnames + filenames]
            for p in entries:
                mode = stat.S_IMODE(p.lstat().st_mode)
                n += 1
                if mode & 0o004:
                    readable.append(f"{oct(mode)} {p.relative_to(world.base)}")
    assert n > 50
    assert not readable, "world-readable:\n" + "\n".join(sorted(set(readable))[:50])
