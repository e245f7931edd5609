"""The HTML report in a real headless Chromium (Debian's `chromium`, driven by Playwright without any browser
download): no console error, no network request, no dialog from the hostile transcript, a non-blank
screenshot, a quote link that jumps to its transcript turn, and sorting.

Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from test_report import HIDDEN_IDS, write_inputs

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def launch(playwright, profile: str):
    """A fresh headless Chromium context (Debian's binary, a new profile directory)."""
    return playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS)


@pytest.fixture(scope="module")
def browser():
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    if not shutil.which("chromium") and not shutil.which(CHROMIUM):
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)")
    with sync.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        try:
            context = launch(p, profile)
        except Exception as exc:  # a browser that cannot start here is a missing prerequisite, said as such
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0][:200]}")
        yield context
        context.close()


@pytest.fixture()
def page(browser, run_cli, tmp_path):
    scores, sessions = write_inputs(tmp_path)
    out = tmp_path / "report.html"
    result = run_cli("report", scores, "--sessions", sessions, "--out", out, "--instrument", "wai-sr")
    assert result.exit_code == 0, result.output
    page = browser.new_page()
    seen = {"console": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: seen["console"].append(f"pageerror: {e}"))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    url = out.as_uri()
    page.goto(url)
    page.wait_for_load_state("load")
    yield page, seen, url
    page.close()


def test_loads_clean_offline_and_renders(page, tmp_path):
    page, seen, url = page
    page.wait_for_timeout(200)
    assert seen["console"] == [] and seen["dialogs"] == []
    assert seen["requests"] == [url]  # the page itself, nothing else
    shot = tmp_path / "shot.png"
    page.screenshot(path=str(shot))
    from PIL import Image

    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert pixels.size[0] > 600 and colours is not None and len(colours) > 50  # text, bars, table: not blank
    assert max(count for count, _ in colours) < 0.9 * pixels.size[0] * pixels.size[1]
    assert page.locator("span.ctl").count() > 0 and page.locator("script").count() == 1


def test_quote_link_jumps_to_its_turn(page):
    page, seen, url = page
    link = page.locator("#s3 a.quote").first
    target = link.get_attribute("href")
    quoted = link.inner_text()
    link.click()
    page.wait_for_function(f"location.hash === {target!r}")
    turn = page.locator(target)
    assert quoted in turn.inner_text()
    assert page.evaluate(f"document.querySelector({target!r}).matches(':target')")
    box = turn.bounding_box()
    assert box is not None and 0 <= box["y"] < page.viewport_size["height"]
    assert seen["requests"] == [url] and seen["console"] == []


def test_sorting(page):
    page, seen, _ = page

    def column(i):
        return page.eval_on_selector_all("#overview tbody tr", f"rows => rows.map(r => r.cells[{i}].getAttribute('data-v'))")

    alliance = [float(v) for v in column(1)]
    assert alliance == sorted(alliance)  # lowest predicted alliance first
    page.click("#overview thead th:nth-child(2) button")  # already ascending: now descending
    assert [float(v) for v in column(1)] == sorted(alliance, reverse=True)
    page.click("#overview thead th:nth-child(3) button")
    goal = [float(v) for v in column(2)]
    assert goal == sorted(goal)
    assert page.get_attribute("#overview thead th:nth-child(3)", "aria-sort") == "ascending"
    page.click("#overview thead th:nth-child(1) button")
    ids = column(0)
    assert ids == sorted(ids)
    assert seen["console"] == []


def test_ids_with_hidden_characters_keep_their_cells_and_sort_keys(browser, run_cli, tmp_path):
    scores, sessions = write_inputs(tmp_path, n=len(HIDDEN_IDS), ids=HIDDEN_IDS)
    out = tmp_path / "report.html"
    assert run_cli("report", scores, "--sessions", sessions, "--out", out, "--instrument", "wai-sr").exit_code == 0
    page = browser.new_page()
    try:
        page.goto(out.as_uri())
        page.click("#overview thead th:nth-child(1) button")
        rows = page.eval_on_selector_all("#overview tbody tr", "rows => rows.map(r => [r.cells.length, "
                                         "r.cells[0].getAttribute('data-v'), r.cells[0].innerText, "
                                         "r.cells[0].attributes.length])")
        heads = page.eval_on_selector_all("#overview thead th", "hs => hs.length")
    finally:
        page.close()
    assert len(rows) == len(HIDDEN_IDS) and all(n == heads and attrs == 1 for n, _, _, attrs in rows)
    keys = [key for _, key, _, _ in rows]
    assert keys == sorted(keys) and all(shown.startswith(key) for _, key, shown, _ in rows)
    assert "s\u27e8U+202E\u27e901" in keys and not any(c in "".join(keys) for c in "\u202e\u200b\u2060\U000e0041")
