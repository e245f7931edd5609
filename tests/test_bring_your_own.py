"""Bring your own data, end to end, with no code edits: synthetic Japanese-looking sessions (tests/ja_corpus.py) as a
turns CSV + a ratings CSV -> `care import table` with the README's mapping -> the README's instrument (20 items on 0-5,
four dimensions, two items in none, Japanese prompt wording in the YAML; the import checks with `care validate`'s
rules) -> `care train` on the CI-sized params with the keep_start_end context policy and a gate with "*" and per-dimension
thresholds -> release -> `care score`. Every output follows the instrument: dimensions, items, scale, card.

One CI-sized pipeline run (about a minute on 2 cores); everything else this issue adds is unit-sized.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

import ja_corpus
from zenml_env import care_world

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "ja-alliance"
CARE = [sys.executable, "-c", "from care_cli.main import app; app()"]
DIMS = ["goal", "task", "bond", "engagement"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _care(env, *args, check=True):
    proc = subprocess.run([*CARE, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"care {' '.join(map(str, args[:2]))} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def test_a_japanese_0_to_5_instrument_with_20_items_imports_trains_gates_releases_and_scores(tmp_path):
    env = care_world(tmp_path)
    rows = ja_corpus.sessions(40)
    planted = ja_corpus.sessions(43)[40:]
    planted[0]["turns"][3] = ("司会", *planted[0]["turns"][3][1:])  # a speaker the mapping does not know
    planted[1]["ratings"]["12"] = 6  # off the 0-5 scale
    role, text, when = planted[2]["turns"][5]
    planted[2]["turns"][5] = (role, text, when - timedelta(hours=2))  # a time that goes back
    ja_corpus.write_csvs(tmp_path / "raw", rows + planted)
    texts = {t for r in rows for _, t, _ in r["turns"]}

    imported = _care(env, "import", "table", tmp_path / "raw", "--map", EXAMPLE / "mapping.yaml", "--out", tmp_path / "data")
    assert "wrote 40 of 43 session(s)" in imported.stdout
    assert "session=ja0040 field=turns[4].speaker: speaker value not in the mapping's speakers" in imported.stderr
    assert "session=ja0041 field=client_ratings.12: rating outside the scale 0-5" in imported.stderr
    assert "session=ja0042 field=turns[5].time: earlier than the previous turn's time" in imported.stderr
    data = tmp_path / "data" / "sessions.jsonl"  # checked by the import with care validate's rules, and by train
    assert json.loads((tmp_path / "data" / "import.json").read_text("utf-8"))["timestamps"]["sessions_with_times"] == 40

    out = tmp_path / "run"
    train = _care(env, "train", "--params", "params.ci.yaml", "--metrics-dir", out / "metrics", "--plots-dir",
                  out / "plots", "--set", f"data.path={data}", "--set", f"data.instrument={EXAMPLE / 'instrument.yaml'}",
                  "--set", "model.context_policy=keep_start_end", "--set", f"release.out={out / 'release'}",
                  "--set", "gate.min_pearson={'*': -1.0, 'engagement': -0.99}",
                  "--set", "gate.max_mse={'*': 9.0, 'bond': 8.5}")
    assert "in staging" in train.stdout
    cv = json.loads((out / "metrics" / "cv_detail.json").read_text("utf-8"))
    assert list(cv["mean"]) == DIMS and list(cv["items"]["mean"]) == [str(i) for i in range(1, 21)]
    assert cv["n_sessions"] == 40 and cv["transcripts"]["truncated"] > 0
    assert all(set(b) == set(DIMS) for b in cv["baselines"].values())
    summary = json.loads((out / "metrics" / "cv.json").read_text("utf-8"))
    assert set(DIMS) <= set(summary) and summary["gate_passed"] is True
    gate = json.loads((out / "metrics" / "gate.json").read_text("utf-8"))
    thresholds = {(c["dimension"], c["metric"]): c["threshold"] for c in gate["checks"]}
    assert thresholds == {**{(d, "pearson"): -1.0 for d in DIMS}, ("engagement", "pearson"): -0.99,
                          **{(d, "mse"): 9.0 for d in DIMS}, ("bond", "mse"): 8.5}
    assert sorted(p.name for p in (out / "plots" / "dimensions").iterdir()) == sorted(f"{d}.json" for d in DIMS)
    row = json.loads((out / "metrics" / "predictions.jsonl").read_text("utf-8").splitlines()[0])
    assert len(row["items"]["pred"]) == 20 and set(row["dimensions"]["pred"]) == set(DIMS)

    release = out / "release"
    manifest = json.loads((release / "manifest.json").read_text("utf-8"))
    assert manifest["scoring"]["context_policy"] == "keep_start_end" and manifest["scoring"]["languages"] == ["ja"]
    card = (release / "README.md").read_text("utf-8")
    assert "# CARE model: ja-alliance-20" in card and "- 20 items, each on a 0-5 scale (0 = 全くそう思わない" in card
    assert "- engagement: the mean of items 16, 17, 18" in card and "items 19, 20" in card
    assert "context policy keep_start_end" in card and "| system | goal | task | bond | engagement |" in card

    new = [json.loads(line) for line in data.read_text("utf-8").splitlines()[:3:2]]  # ja0000: 90 turns, ja0002: 10
    for s in new:
        s["client_ratings"] = None
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in new), "utf-8")
    scored = _care(env, "score", "--model", release, tmp_path / "new.jsonl", "--out", tmp_path / "scores.jsonl")
    assert "truncated transcripts: 1" in scored.stderr
    lines = (tmp_path / "scores.jsonl").read_text("utf-8").splitlines()
    assert not any(t in line for t in texts for line in lines)  # never transcript text
    first = json.loads(lines[0])
    assert first["truncated"] is True and list(first["dimensions"]) == DIMS and len(first["items"]) == 20
    for item in first["items"].values():
        assert list(item["distribution"]) == ["0", "1", "2", "3", "4", "5"]
        assert sum(item["distribution"].values()) == pytest.approx(1.0, abs=1e-4) and 0.0 <= item["expected"] <= 5.0
