"""The demo's report in headless Chromium: checked, and photographed for docs/report.md.

    python bench/screenshot_report.py [--out docs/report.png]

Runs the demo (config.example.toml) in a temporary copy, writes its report with
``python -m supervisor report``, opens it in headless Chromium (Debian's ``chromium``),
fails on any JavaScript error or plot without its SVG, and saves the screenshot.
tests/test_report.py drives the same functions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=15000",
)
BROWSER_TIMEOUT_S = 120
# Put first in <head> of a copy of the page: every uncaught error, rejected promise and
# console.error lands in <pre id="js-errors">, which --dump-dom then shows.
ERROR_COLLECTOR = """<script>(function () {
function note(text) { var pre = document.getElementById('js-errors');
  if (!pre) { pre = document.createElement('pre'); pre.id = 'js-errors';
    (document.body || document.documentElement).appendChild(pre); }
  pre.textContent += text + '\\n'; }
window.addEventListener('error', function (e) {
  note('error: ' + e.message + ' at ' + e.filename + ':' + e.lineno); });
window.addEventListener('unhandledrejection', function (e) { note('rejection: ' + e.reason); });
var original = console.error;
console.error = function () { note('console.error: ' + Array.prototype.join.call(arguments, ' '));
  original.apply(console, arguments); };
})();</script>"""


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", *CHROMIUM_NAMES):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(chromium: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, stdin=subprocess.DEVNULL)


def check_page(chromium: str, page: Path, workdir: Path) -> dict:
    """Open a copy of ``page`` with the error collector; returns the JavaScript errors,
    the plot divs' ids and those of them holding an SVG, and the DOM."""
    probe = workdir / f"checked-{page.name}"
    probe.write_text(page.read_text().replace("<head>", "<head>" + ERROR_COLLECTOR, 1))
    proc = _chromium(chromium, workdir, "--dump-dom", probe.as_uri())
    if proc.returncode != 0 or "</html>" not in proc.stdout:
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")
    dom = proc.stdout
    errors = re.findall(r'<pre id="js-errors">(.*?)</pre>', dom, re.S)
    errors = [e for block in errors for e in block.splitlines() if e.strip()]
    errors += [line for line in proc.stderr.splitlines() if "Uncaught" in line]
    plots = re.findall(r'<div id="([^"]+)" class="plotly-graph-div[^"]*"', dom)
    rendered = []
    for plot_id in plots:
        start = dom.index(f'<div id="{plot_id}"')
        following = [dom.find(f'<div id="{p}"', start + 1) for p in plots]
        end = min([i for i in following if i > start] + [len(dom)])
        if "<svg" in dom[start:end]:
            rendered.append(plot_id)
    return {"errors": errors, "plots": plots, "rendered": rendered, "dom": dom}


def screenshot(chromium: str, page: Path, png: Path, workdir: Path,
               size: tuple[int, int] = (1280, 2000)) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    proc = _chromium(chromium, workdir, f"--window-size={size[0]},{size[1]}",
                     f"--screenshot={png}", page.as_uri())
    if proc.returncode != 0 or not png.exists():
        raise RuntimeError(f"chromium screenshot failed: {proc.stderr[-2000:]}")


def run_demo(root: Path) -> Path:
    """Run the README's demo in ``root`` (a copy) and write its report; returns the page."""
    shutil.copy(ROOT / "config.example.toml", root / "config.example.toml")
    shutil.copytree(ROOT / "demo", root / "demo",
                    ignore=shutil.ignore_patterns("data", "experiments"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = [sys.executable, "-m", "supervisor"]
    for args in (["config.example.toml"], ["report", "config.example.toml"]):
        proc = subprocess.run(run + args, cwd=root, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return root / "demo" / "experiments" / "demo" / "report.html"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = p.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("no chromium found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        page = run_demo(Path(tmp))
        result = check_page(chromium, page, Path(tmp))
        if result["errors"] or not result["plots"] or result["rendered"] != result["plots"]:
            print(f"report broken: errors {result['errors']}, plots {result['plots']}, "
                  f"rendered {result['rendered']}", file=sys.stderr)
            return 1
        screenshot(chromium, page, args.out.resolve(), Path(tmp))
    print(f"{args.out}: {len(result['plots'])} plots, no JavaScript error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
