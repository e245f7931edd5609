"""`care report`: hostile transcripts render as text, the CSP forbids the network and allows only the page's
own style and script, the first lines say it holds client data, the file is written atomically with mode
0600, uncertain sessions are the widest intervals, and bad inputs exit 1 naming file, line, session, field.
(tests/test_report_browser.py drives the page in a real Chromium.)"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import stat
from pathlib import Path

from conftest import session_dict, write_jsonl_file

from care.data.instrument import load_instrument
from care.report.html import text

INST = load_instrument("wai-sr")
HOSTILE = ["你好，<script>alert('x')</script>今天想聊些什么？",
           "最近工作压力很大</textarea><img src=x onerror=alert(1)>，晚上睡不好。",
           "点这里 javascript:alert(document.cookie) 看看 <a href=\"javascript:alert(2)\">链接</a>",
           "\u202eRTL override\u202c then \u2066isolate\u2069 and a bell\x07 and escape\x1b[31m",
           "听起来这段时间很辛苦，能多说一些吗？"]


def write_inputs(where: Path, n: int = 7, intervals: bool = True, seed: int = 1) -> tuple[Path, Path]:
    """Sessions with hostile transcripts and matching `care score`-shaped records (quotes, intervals)."""
    rng = random.Random(seed)
    rows, scores = [], []
    for k in range(n):
        sid = f"s{k:02d}" if k else "s<b>00</b>"
        rows.append(session_dict(session_id=sid, turns=[{"speaker": ("counselor", "client")[t % 2], "text": x}
                                                         for t, x in enumerate(HOSTILE)],
                                 client_ratings=None, counselor_ratings=None, rationales=None))
        items = {}
        for item in INST.item_ids:
            d = [rng.random() for _ in range(5)]
            d = [x / sum(d) for x in d]
            e = sum(p * x for p, x in zip(INST.scale.points, d))
            w = rng.uniform(0.3, 1.2)
            quoted = HOSTILE[1][:8]
            items[item] = {"expected": e, "distribution": {str(p): x for p, x in zip(INST.scale.points, d)},
                           "greedy": 3, "rationale": f"来访者说“{quoted}”，咨询师问“{HOSTILE[4][:6]}”<script>x</script>",
                           "quotes": [{"turn": 1, "start": 0, "end": 8}, {"turn": 4, "start": 0, "end": 6}]}
            if intervals:
                items[item]["interval"] = {"80": [max(1, e - w), min(5, e + w)],
                                           "90": [max(1, e - 1.3 * w), min(5, e + 1.3 * w)]}
        dims = INST.dimension_scores({i: v["expected"] for i, v in items.items()})
        rec = {"session_id": sid, "items": items, "dimensions": dims, "dimensions_greedy": dims, "truncated": k == 2}
        if intervals:
            rec["interval"] = {d: {"80": [max(1, v - 0.3 - 0.1 * k), min(5, v + 0.3 + 0.1 * k)],
                                   "90": [max(1, v - 0.9), min(5, v + 0.9)]} for d, v in dims.items()}
        scores.append(rec)
    return write_jsonl_file(where / "scores.jsonl", scores), write_jsonl_file(where / "sessions.jsonl", rows)


def _report(run_cli, tmp_path, **kw) -> str:
    scores, sessions = write_inputs(tmp_path, **kw)
    out = tmp_path / "report.html"
    result = run_cli("report", scores, "--sessions", sessions, "--out", out, "--instrument", "wai-sr")
    assert result.exit_code == 0, result.output
    return out.read_text("utf-8")


def test_hostile_text_is_shown_as_text(run_cli, tmp_path):
    page = _report(run_cli, tmp_path)
    body = page.split("<body>", 1)[1]
    assert "<script>alert" not in page and "<img" not in page and "</textarea>" not in page
    assert re.findall(r"<script>", body) == ["<script>"]  # only the page's own script
    assert 'href="javascript' not in page.lower() and "javascript:alert(document.cookie)" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;/textarea&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    for ch in "\u202e\u202c\u2066\u2069\x07\x1b":
        assert ch not in page
    assert '<span class="ctl">U+202E</span>' in page and '<span class="ctl">U+0007</span>' in page
    assert "s&lt;b&gt;00&lt;/b&gt;" in page and "<b>00</b>" not in page
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs and all(re.fullmatch(r"#(top|s\d+(-t\d+)?)", h) for h in hrefs)
    assert text("a\tb\nc\r") == "a\tb\nc\r"


def test_csp_first_lines_and_private_atomic_file(run_cli, tmp_path):
    page = _report(run_cli, tmp_path)
    assert "CONTAINS CLIENT DATA" in "\n".join(page.splitlines()[:3])
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page).group(1)
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp and "unsafe-inline" not in csp
    for tag in ("script", "style"):
        body = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp
    assert " style=" not in page  # the CSP allows no inline style attributes
    out = tmp_path / "report.html"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overview_order_and_uncertain_marks(run_cli, tmp_path):
    page = _report(run_cli, tmp_path)
    rows = re.findall(r'<tr data-i="(\d+)"( class="uncertain")?><td data-v="[^"]*"><a href="#s\d+">[^<]*</a>'
                      r'(?: <span class="flag"[^>]*>[^<]*</span>)?</td><td class="num" data-v="([\d.]+)"', page)
    overall = [float(v) for _, _, v in rows]
    assert len(rows) == 7 and overall == sorted(overall)
    flagged = {int(i) for i, mark, _ in rows if mark}
    assert flagged == {6, 5}  # the widest intervals (ceil(20% of 7) = 2)
    (tmp_path / "plain").mkdir()
    plain = _report(run_cli, tmp_path / "plain", intervals=False)
    assert 'class="uncertain"' not in plain and "no intervals" in plain


def _case(tmp_path: Path, name: str, edit) -> tuple[Path, Path]:
    where = tmp_path / name
    where.mkdir()
    scores, sessions = write_inputs(where, n=2)
    records = [json.loads(line) for line in scores.read_text("utf-8").splitlines()]
    edit(records)
    return write_jsonl_file(scores, records), sessions


def test_bad_inputs_exit_1_and_write_nothing(run_cli, tmp_path):
    def unknown(r):
        r[1]["session_id"] = "nope"

    def quote(r):
        r[0]["items"]["3"]["quotes"][0]["end"] = 10_000

    def items(r):
        del r[1]["items"]["12"]

    def scale(r):
        r[0]["dimensions"]["goal"] = 9.0

    cases = {"unknown": (unknown, ":2 session=nope field=session_id: no such session"),
             "quote": (quote, ":1 session=s<b>00</b> field=items.3.quotes[0]: not a span"),
             "items": (items, ":2 session=s01 field=items: items do not match instrument wai-sr"),
             "scale": (scale, ":1 session=s<b>00</b> field=dimensions.goal: outside the scale")}
    for name, (edit, message) in cases.items():
        scores, sessions = _case(tmp_path, name, edit)
        out = tmp_path / f"{name}.html"
        result = run_cli("report", scores, "--sessions", sessions, "--out", out, "--instrument", "wai-sr")
        assert result.exit_code == 1 and message in result.stderr, (name, result.stderr)
        assert not out.exists() and "Traceback" not in result.output
        assert HOSTILE[1][:4] not in result.output
    missing = run_cli("report", tmp_path / "absent.jsonl", "--sessions", sessions, "--out", tmp_path / "x.html",
                      "--instrument", "wai-sr")
    assert missing.exit_code == 1 and "absent.jsonl: no such file" in missing.stderr
    existing = tmp_path / "dir.html"
    existing.mkdir()
    scores, sessions = write_inputs(tmp_path / "unknown", n=1)
    result = run_cli("report", scores, "--sessions", sessions, "--out", existing, "--instrument", "wai-sr")
    assert result.exit_code == 1 and "cannot write" in result.stderr and existing.is_dir()
