"""The session report as one self-contained HTML page: inline CSS, SVG and script; no request leaves it.

Every piece of data goes through one escaping function (`text`), in text and in attributes alike: markup
and quotes become entities, and every character that is invisible or reorders its neighbours (controls,
bidi embeddings, overrides, isolates and marks, zero-width and other default-ignorable characters, Unicode
tag characters, private use) becomes a visible mark `⟨U+XXXX⟩`, so an id cannot end an attribute, look
like another id or hide part of itself. Data never reaches an attribute but as a number or through `text`,
and never reaches the script. A
Content-Security-Policy meta tag forbids every network request and allows only this page's own style and
script (by their sha256).
"""

from __future__ import annotations

import base64
import hashlib
import html
from typing import Iterable

import regex

from care.data.instrument import Instrument
from care.data.schema import Session
from care.report.inputs import ReportInput, SessionResult, first_level, overall, uncertain

NOTICE = ("CONTAINS CLIENT DATA: counseling transcripts and scores of real sessions. Confidential: for the "
          "people allowed to read these sessions only; do not upload, e-mail or publish it.")
UNCERTAIN_SHARE = 0.2

# Controls (but tab, newline, carriage return), format characters (bidi embeddings, overrides, isolates and
# marks, U+200B-U+200D, U+2060, U+FEFF, tags U+E0001-U+E007F...), line and paragraph separators, surrogates,
# private use, and every default-ignorable code point (Hangul fillers, unassigned tags U+E0000-U+E0FFF...);
# the emoji presentation selectors U+FE0E/U+FE0F only choose a glyph and stay.
_HIDDEN = regex.compile(r"[[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Co}\p{Default_Ignorable_Code_Point}]--[\t\n\r\uFE0E\uFE0F]]",
                        regex.V1)

_STYLE = """
:root{--ink:#1d2733;--muted:#5b6776;--line:#d9dee5;--accent:#2f6db5;--warn:#b5542f;--bg:#f6f7f9}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC",sans-serif;color:var(--ink);
 margin:0;background:var(--bg)}
header,main{max-width:1100px;margin:0 auto;padding:0 20px}
.notice{background:#fff4e5;border-bottom:2px solid var(--warn);padding:8px 20px;font-weight:600;color:#7a3412}
h1{font-size:1.5em;margin:18px 0 4px}
h2{font-size:1.2em;margin:0 0 8px}
h3{font-size:1em;margin:16px 0 6px}
.lead,.note{color:var(--muted);margin:4px 0 12px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:middle}
th{font-weight:600;background:#eef1f5}
th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0;color:inherit}
th button::after{content:" \\2195";color:var(--muted)}
th[aria-sort=ascending] button::after{content:" \\2191"}
th[aria-sort=descending] button::after{content:" \\2193"}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.iv{color:var(--muted);font-size:.9em}
.flag{color:var(--warn);font-weight:600;white-space:nowrap}
tr.uncertain td:first-child{border-left:4px solid var(--warn)}
.session{background:#fff;border:1px solid var(--line);border-radius:6px;padding:14px 16px;margin:22px 0}
.meta{color:var(--muted);font-size:.9em;margin-bottom:8px}
.rationale{margin:6px 0 10px;padding:6px 10px;border-left:3px solid var(--line);white-space:pre-wrap}
.rationale b{font-weight:600}
a.quote{background:#e3efff;color:inherit;text-decoration:none;border-bottom:2px solid var(--accent);border-radius:2px}
a.quote:hover,a.quote:focus{background:#c9defd}
ol.transcript{padding-left:2.6em}
ol.transcript li{padding:3px 6px;margin:2px 0;border-radius:4px;white-space:pre-wrap;scroll-margin-top:40vh}
ol.transcript li:target{background:#fff3c4;outline:2px solid #e0b400}
.who{font-weight:600;color:var(--muted);margin-right:6px}
mark{background:#dbeaff;color:inherit}
.ctl{font:11px monospace;color:#a00;border:1px solid #a00;border-radius:2px;padding:0 2px;margin:0 1px}
svg{vertical-align:middle}
.back{font-size:.9em}
"""

_SCRIPT = """
(function () {
  var table = document.getElementById("overview");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function key(row, col, num) {
    var v = row.cells[col].getAttribute("data-v");
    if (!num) return v;
    return v === "" ? null : parseFloat(v);
  }
  Array.prototype.forEach.call(table.querySelectorAll("thead button"), function (button) {
    button.addEventListener("click", function () {
      var th = button.parentNode, col = th.cellIndex, num = button.getAttribute("data-type") === "num";
      var asc = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, col, num), y = key(b, col, num), c;
        if (x === null || y === null) {
          c = x === y ? 0 : (x === null ? 1 : -1);
          return c || (+a.getAttribute("data-i") - +b.getAttribute("data-i"));
        }
        c = num ? x - y : (x < y ? -1 : (x > y ? 1 : 0));
        if (!asc) c = -c;
        return c || (+a.getAttribute("data-i") - +b.getAttribute("data-i"));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
"""


def text(value: str, attribute: bool = False) -> str:
    """`value` escaped for HTML text or, with `attribute`, for a quoted attribute value: `<`, `>`, `&` and both
    quotes as entities, and each hidden character (see `_HIDDEN`) as the visible mark `⟨U+XXXX⟩` (boxed in text)."""
    out, pos = [], 0
    for m in _HIDDEN.finditer(value):
        out.append(html.escape(value[pos:m.start()], quote=True))
        mark = f"\u27e8U+{ord(m.group()):04X}\u27e9"
        out.append(mark if attribute else f'<span class="ctl">{mark}</span>')
        pos = m.end()
    out.append(html.escape(value[pos:], quote=True))
    return "".join(out)


def _sha(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")


CSP = (f"default-src 'none'; script-src '{_sha(_SCRIPT)}'; style-src '{_sha(_STYLE)}'; img-src 'none'; "
       "connect-src 'none'; font-src 'none'; media-src 'none'; object-src 'none'; frame-src 'none'; "
       "base-uri 'none'; form-action 'none'")


def _num(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _span(iv: tuple[float, float] | None) -> str:
    return "" if iv is None else f"[{iv[0]:.2f}, {iv[1]:.2f}]"


def bar(value: float | None, interval: tuple[float, float] | None, low: float, high: float, width: int = 140) -> str:
    """An inline SVG bar for `value` on the scale, with the interval as a whisker."""
    h, pad = 16, 4

    def x(v: float) -> float:
        return pad + (min(max(v, low), high) - low) / (high - low) * (width - 2 * pad)

    label = f"{_num(value)}" + (f", interval {interval[0]:.2f} to {interval[1]:.2f}" if interval else "")
    parts = [f'<svg width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" '
             f'aria-label="{text(label, attribute=True)}">',
             f"<title>{text(label)}</title>",
             f'<rect x="{pad}" y="6" width="{width - 2 * pad}" height="4" fill="#e6e9ee"/>']
    if value is not None:
        parts.append(f'<rect x="{pad}" y="4" width="{x(value) - pad:.1f}" height="8" rx="2" fill="#7aa6db"/>')
    if interval is not None:
        lo, hi = x(interval[0]), x(interval[1])
        parts += [f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="8" y2="8" stroke="#1d2733" stroke-width="1.5"/>',
                  f'<line x1="{lo:.1f}" x2="{lo:.1f}" y1="3" y2="13" stroke="#1d2733" stroke-width="1.5"/>',
                  f'<line x1="{hi:.1f}" x2="{hi:.1f}" y1="3" y2="13" stroke="#1d2733" stroke-width="1.5"/>']
    if value is not None:
        parts.append(f'<circle cx="{x(value):.1f}" cy="8" r="3" fill="#2f6db5"/>')
    return "".join(parts) + "</svg>"


_SHADES = ("#d7e3f4", "#b3cbea", "#86acdc", "#5b8ccb", "#2f6db5", "#23528a", "#183a63", "#0f2742", "#081626", "#000")


def distribution_bar(distribution: dict[str, float], points: list[int], width: int = 120) -> str:
    """A small stacked SVG bar of the probability of each scale point (lightest = lowest point)."""
    label = ", ".join(f"{p}: {100 * distribution.get(str(p), 0.0):.0f}%" for p in points)
    parts = [f'<svg width="{width}" height="12" viewBox="0 0 {width} 12" role="img" '
             f'aria-label="{text(label, attribute=True)}">',
             f"<title>{text(label)}</title>"]
    x = 0.0
    for k, p in enumerate(points):
        w = max(distribution.get(str(p), 0.0), 0.0) * width
        parts.append(f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="12" fill="{_SHADES[k % len(_SHADES)]}"/>')
        x += w
    return "".join(parts) + "</svg>"


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _marked(value: str, spans: list[tuple[int, int]]) -> str:
    out, pos = [], 0
    for s, e in _merge(spans):
        out += [text(value[pos:s]), "<mark>", text(value[s:e]), "</mark>"]
        pos = e
    out.append(text(value[pos:]))
    return "".join(out)


def _rationale(rationale: str, quotes, session: Session, si: int) -> str:
    """The rationale with each quote linked to its turn (quotes found in order in the text)."""
    out, pos = [], 0
    for q in quotes or []:
        span = session.turns[q.turn].text[q.start:q.end]
        at = rationale.find(span, pos)
        if at < 0:
            continue
        out.append(text(rationale[pos:at]))
        out.append(f'<a class="quote" href="#s{si}-t{q.turn}" title="turn {q.turn + 1}">{text(span)}</a>')
        pos = at + len(span)
    out.append(text(rationale[pos:]))
    return "".join(out)


def _speaker(session: Session, instrument: Instrument, speaker: str) -> str:
    try:
        names = instrument.prompt_texts(session.language).speakers
        return {"counselor": names.counselor, "client": names.client}.get(speaker, speaker)
    except Exception:  # a language the instrument has no wording for: the raw speaker label
        return speaker


def _item_text(instrument: Instrument, item_id: str, language: str) -> str:
    texts = instrument.item(item_id).text
    return texts.get(language) or texts.get("en") or next(iter(texts.values()), "")


def _overview(data: ReportInput, level: str | None, marks: list[bool], scale: tuple[float, float]) -> str:
    dims = data.instrument.dimensions
    head = ['<th><button type="button" data-type="text">Session</button></th>',
            '<th aria-sort="ascending"><button type="button" data-type="num">Alliance</button></th>']
    head += [f'<th><button type="button" data-type="num">{text(d)}</button></th>' for d in dims]
    head.append(f'<th><button type="button" data-type="num">{text(level) + "% i" if level else "I"}nterval width</button></th>')
    order = sorted(range(len(data.results)), key=lambda i: (overall(data.results[i]) is None,
                                                              overall(data.results[i]) or 0.0, i))
    rows = []
    for i in order:
        r = data.results[i]
        total = overall(r)
        cells = [f'<td data-v="{text(r.session_id, attribute=True)}"><a href="#s{i}">{text(r.session_id)}</a>'
                 + (' <span class="flag" title="among the widest intervals">&#9888; uncertain</span>' if marks[i] else "")
                 + "</td>",
                 f'<td class="num" data-v="{"" if total is None else f"{total:.6f}"}">{_num(total)}</td>']
        for d in dims:
            v = r.dimensions.get(d)
            iv = (r.interval or {}).get(d, {}).get(level) if level else None
            cells.append(f'<td class="num" data-v="{"" if v is None else f"{v:.6f}"}">{bar(v, iv, *scale, width=110)} {_num(v)}'
                         f' <span class="iv">{_span(iv)}</span></td>')
        widths = [(r.interval or {}).get(d, {}).get(level) for d in dims] if level else []
        w = sum(hi - lo for lo, hi in widths) / len(widths) if widths and all(widths) else None
        cells.append(f'<td class="num" data-v="{"" if w is None else f"{w:.6f}"}">{_num(w)}</td>')
        flag = ' class="uncertain"' if marks[i] else ""
        rows.append(f'<tr data-i="{i}"{flag}>{"".join(cells)}</tr>')
    return (f'<table id="overview"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _session(i: int, r: SessionResult, session: Session, instrument: Instrument, levels: list[str],
             flagged: bool, scale: tuple[float, float]) -> str:
    level = levels[0] if levels else None
    points = instrument.scale.points
    meta = [f"language {text(session.language)}", f"{len(session.turns)} turns"]
    if r.truncated:
        meta.append("the transcript was cut to fit the model's context (its start was not read)")
    if flagged:
        meta.append('<span class="flag">&#9888; uncertain: among the widest intervals</span>')
    dim_rows = []
    for d in instrument.dimensions:
        v = r.dimensions.get(d)
        ivs = (r.interval or {}).get(d, {})
        spans = " ".join(f"{x}%: {_span(ivs.get(x))}" for x in levels if ivs.get(x))
        dim_rows.append(f'<tr><td>{text(d)}</td><td class="num">{bar(v, ivs.get(level) if level else None, *scale)} '
                        f'{_num(v)}</td><td class="num iv">{spans}</td></tr>')
    item_rows, rationales, turn_spans = [], [], {}
    for item_id in instrument.item_ids:
        it = r.items[item_id]
        iv = (it.interval or {}).get(level) if level else None
        item_rows.append(
            f"<tr><td>{text(item_id)}</td><td>{text(_item_text(instrument, item_id, session.language))}</td>"
            f'<td class="num">{_num(it.expected)}</td><td>{distribution_bar(it.distribution, points)}</td>'
            f'<td class="num iv">{_span(iv)}</td><td class="num">{"n/a" if it.greedy is None else it.greedy}</td></tr>')
        if it.rationale is not None:
            rationales.append(f'<div class="rationale"><b>{text(item_id)}.</b> '
                              f"{_rationale(it.rationale, it.quotes, session, i)}</div>")
            for q in it.quotes or []:
                turn_spans.setdefault(q.turn, []).append((q.start, q.end))
    turns = "".join(
        f'<li id="s{i}-t{t}" dir="auto"><span class="who">{text(_speaker(session, instrument, turn.speaker))}</span>'
        f"<bdi>{_marked(turn.text, turn_spans.get(t, []))}</bdi></li>"
        for t, turn in enumerate(session.turns))
    return (f'<section class="session" id="s{i}"><h2>{text(r.session_id)}</h2>'
            f'<div class="meta">{" &middot; ".join(meta)}</div>'
            f"<table><thead><tr><th>Dimension</th><th>Predicted</th><th>Intervals</th></tr></thead>"
            f'<tbody>{"".join(dim_rows)}</tbody></table>'
            "<h3>Items</h3><table><thead><tr><th>Item</th><th>Statement</th><th>Expected</th>"
            f"<th>Distribution ({points[0]}&ndash;{points[-1]})</th>"
            f"<th>{text(level or '')}{'% interval' if level else 'Interval'}</th>"
            f'<th>Greedy</th></tr></thead><tbody>{"".join(item_rows)}</tbody></table>'
            + (f"<h3>Rationales</h3>{''.join(rationales)}" if rationales else "")
            + f'<h3>Transcript</h3><ol class="transcript" start="1">{turns}</ol>'
            '<p class="back"><a href="#top">back to the overview</a></p></section>')


def render(data: ReportInput, title: str = "CARE session report") -> str:
    """The whole page."""
    instrument = data.instrument
    scale = (float(instrument.scale.min), float(instrument.scale.max))
    level = first_level(data.results)
    levels = sorted({x for r in data.results for c in (r.interval or {}).values() for x in c}, key=float)
    marks = uncertain(data.results, level, UNCERTAIN_SHARE)
    if level:
        about = (f"Bars show the predicted score on the {instrument.scale.min}&ndash;{instrument.scale.max} scale; "
                 f"whiskers the {text(level)}% interval: for sessions like the training data, {text(level)}% of "
                 f"clients' own scores fell inside it. &#9888; marks the {int(100 * UNCERTAIN_SHARE)}% of sessions "
                 "whose intervals are widest.")
    else:
        about = "These scores carry no intervals (the model package has no calibration): nothing is marked uncertain."
    sessions = "".join(_session(i, r, s, instrument, levels, marks[i], scale)
                       for i, (r, s) in enumerate(zip(data.results, data.sessions)))
    return f"""<!DOCTYPE html>
<!-- {NOTICE} -->
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{text(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<div class="notice" role="note">{text(NOTICE)}</div>
<header id="top"><h1>{text(title)}</h1>
<p class="lead">{len(data.results)} session(s) scored on {text(instrument.name)}, lowest predicted alliance first
(alliance = the mean of {", ".join(text(d) for d in instrument.dimensions)}). Click a column to sort.</p>
<p class="note">{about} Decision support only: read a score next to the transcript, never as a verdict on a person.</p>
</header>
<main>
{_overview(data, level, marks, scale)}
{sessions}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""
