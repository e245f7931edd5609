"""Regenerate docs/report.png: score synthetic sessions with a release package, write the HTML report, and
take a screenshot of it in headless Chromium (Debian's `chromium`; Playwright drives it, nothing downloaded).

    python scripts/report_screenshot.py --model release [--sessions data/sessions.jsonl] [--n 6] \
        [--out docs/report.png]

Use synthetic sessions only (the default data is the synthetic corpus): the picture goes into the docs.
The scores, the page and the sessions are written to a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def care(*args: str) -> None:
    subprocess.run([sys.executable, "-c", "from care_cli.main import app; app()", *args], cwd=ROOT, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="release")
    ap.add_argument("--sessions", default="data/sessions.jsonl")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", default="docs/report.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = Path(args.sessions).read_text("utf-8").splitlines()[: args.n]
        (tmp / "in.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
        care("score", "--model", args.model, str(tmp / "in.jsonl"), "--rationales", "--out", str(tmp / "scores.jsonl"))
        care("report", str(tmp / "scores.jsonl"), "--sessions", str(tmp / "in.jsonl"), "--out", str(tmp / "report.html"),
             "--instrument", str(Path(args.model) / "instrument.yaml"))
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path=args.chromium,
                                                           headless=True, args=FLAGS,
                                                           viewport={"width": 1280, "height": 1500})
            page = context.new_page()
            page.goto((tmp / "report.html").as_uri())
            page.screenshot(path=args.out, full_page=False)
            context.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
