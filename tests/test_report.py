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
from html.parser import HTMLParser
from pathlib import Path

from conftest import session_dict, write_jsonl_file

from care.data.instrument import load_instrument
from care.report.html import _HIDDEN, text

INST = load_instrument("wai-sr")
HOSTILE = ["你好，<script>alert('x')</script>今天想聊些什么？",
           "最近工作压力很大</textarea><img src=x onerror=alert(1)>，晚上睡不好。",
           "点这里 javascript:alert(document.cookie) 看看 <a href=\"javascript:alert(2)\">链接</a>",
           "\u202eRTL override\u202c then \u2066isolate\u2069 and a bell\x07 and escape\x1b[31m",
           "听起来这段时间很辛苦，能多说一些吗？"]


def write_inputs(where: Path, n: int = 7, intervals: bool = True, seed: int = 1,
                 ids: list[str] | None = None) -> tuple[Path, Path]:
    """Sessions with hostile transcripts and matching `care score`-shaped records (quotes, intervals)."""
    rng = random.Random(seed)
    rows, scores = [], []
    for k in range(n):
        sid = ids[k] if ids else f"s{k:02d}" if k else "s<b>00</b>"
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


# ids a person cannot read as written: a bidi override (the review's case), an isolate, an Arabic letter mark,
# zero-width space and joiner, a word joiner, a byte-order mark, Unicode tag characters (invisible "AB" and a
# cancel tag), a Hangul filler, and quotes that would end the attribute
HIDDEN_IDS = ["s\u202e01", "s\u206602\u2069", "s03\u061c", "s\u200b04\u200d", "s05\u2060\ufeff",
              "s06\U000e0041\U000e0042\U000e007f", "s07\u3164", 's08"\' data-x="1']


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
    assert '<span class="ctl">\u27e8U+202E\u27e9</span>' in page and '<span class="ctl">\u27e8U+0007\u27e9</span>' in page
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


class _Overview(HTMLParser):
    """The overview table's rows: per row, each cell's attributes and its text."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[tuple[dict, str]]] = []
        self._in = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._in = dict(attrs).get("id") == "overview"
        elif self._in and tag == "tr" and dict(attrs).get("data-i") is not None:
            self.rows.append([])
        elif self._in and tag == "td" and self.rows:
            self.rows[-1].append((dict(attrs), ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self._in = False

    def handle_data(self, data):
        if self._in and self.rows and self.rows[-1]:
            attrs, seen = self.rows[-1][-1]
            self.rows[-1][-1] = (attrs, seen + data)


def _visible(value: str) -> str:
    return "".join(f"\u27e8U+{ord(c):04X}\u27e9" if _HIDDEN.match(c) else c for c in value)


def test_hidden_characters_in_ids_are_marked_in_cells_and_sort_keys(run_cli, tmp_path):
    page = _report(run_cli, tmp_path, n=len(HIDDEN_IDS), ids=HIDDEN_IDS)
    for ch in "\u202e\u2066\u2069\u061c\u200b\u200d\u2060\ufeff\U000e0041\U000e007f\u3164":
        assert ch not in page
    overview = _Overview()
    overview.feed(page)
    cells = 3 + len(INST.dimensions)
    assert len(overview.rows) == len(HIDDEN_IDS) and all(len(r) == cells for r in overview.rows)
    for row in overview.rows:
        assert set(row[0][0]) == {"data-v"}  # no attribute smuggled in by a quote
    shown = sorted(row[0][0]["data-v"] for row in overview.rows)
    assert shown == sorted(_visible(i) for i in HIDDEN_IDS)
    assert all(row[0][1].startswith(row[0][0]["data-v"]) for row in overview.rows)  # the cell reads as its key
    assert "s\u27e8U+202E\u27e901" in shown and "s06\u27e8U+E0041\u27e9\u27e8U+E0042\u27e9\u27e8U+E007F\u27e9" in shown
    assert text('a"b\'c<\u200b>', attribute=True) == "a&quot;b&#x27;c&lt;\u27e8U+200B\u27e9&gt;"


def test_numbers_json_cannot_hold_are_located_problems(run_cli, tmp_path):
    scores, sessions = write_inputs(tmp_path, n=2)
    lines = scores.read_text("utf-8").splitlines()
    lines[0] = re.sub(r'"greedy": 3', '"greedy": ' + "7" * 5000, lines[0], count=1)
    lines[1] = lines[1].replace('"truncated": false', '"truncated": false, "truncated": true', 1)
    scores.write_text("\n".join(lines) + "\n", "utf-8")
    result = run_cli("report", scores, "--sessions", sessions, "--out", tmp_path / "r.html", "--instrument", "wai-sr")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"{scores}:1 session=s<b>00</b> field=items.key#1.greedy: number of 5000 digits" in result.stderr
    assert f"{scores}:2 session=? field=<json>: duplicate JSON key (key 6 of an object" in result.stderr
    assert "7777" not in result.output


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

    def level(r):  # a level that is no number, and one that could be anyone's words
        r[0]["interval"]["goal"]["80%"] = r[0]["interval"]["goal"].pop("80")
        r[1]["items"]["2"]["interval"]["SECRET-LEVEL"] = [1.0, 2.0]

    cases = {"unknown": (unknown, ":2 session=nope field=session_id: no such session"),
             "level": (level, ":1 session=s<b>00</b> field=interval.goal.level#2: Value error, an interval level "
                              "must be a number of percent"),
             "item level": (level, ":2 session=s01 field=items.2.interval.level#3: Value error, an interval level"),
             "quote": (quote, ":1 session=s<b>00</b> field=items.3.quotes[0]: not a span"),
             "items": (items, ":2 session=s01 field=items: items do not match instrument wai-sr"),
             "scale": (scale, ":1 session=s<b>00</b> field=dimensions.goal: outside the scale")}
    for name, (edit, message) in cases.items():
        scores, sessions = _case(tmp_path, name, edit)
        out = tmp_path / f"{name}.html"
        result = run_cli("report", scores, "--sessions", sessions, "--out", out, "--instrument", "wai-sr")
        assert result.exit_code == 1 and message in result.stderr, (name, result.stderr)
        assert not out.exists() and "Traceback" not in result.output
        assert HOSTILE[1][:4] not in result.output and "SECRET" not in result.output and "80%" not in result.output
        assert all(line.startswith(str(scores)) for line in result.stderr.splitlines()[:-1])
    missing = run_cli("report", tmp_path / "absent.jsonl", "--sessions", sessions, "--out", tmp_path / "x.html",
                      "--instrument", "wai-sr")
    assert missing.exit_code == 1 and "absent.jsonl: no such file" in missing.stderr
    existing = tmp_path / "dir.html"
    existing.mkdir()
    scores, sessions = write_inputs(tmp_path / "unknown", n=1)
    result = run_cli("report", scores, "--sessions", sessions, "--out", existing, "--instrument", "wai-sr")
    assert result.exit_code == 1 and "cannot write" in result.stderr and existing.is_dir()
