"""Take a screenshot of the Dagster asset graph of a demo workspace: docs/dagster-asset-graph.png.

Starts ``dagster dev`` on the workspace exactly as ``hub dagster`` does (DAGSTER_HOME set to
``<workspace>/dagster``, HUB_WORKSPACE to the workspace), opens the global asset lineage
in headless Chromium, waits until the graph has drawn its nodes, saves the PNG and stops
``dagster dev``.

Needs, besides hub's own dependencies (none of these is one):

    apt-get install -y chromium chromium-driver    # Debian's Chromium and its WebDriver
    .venv/bin/pip install selenium                 # drives it; not in pyproject.toml

Usage, after ``make demo``::

    .venv/bin/python docs/screenshot_dagster.py [--workspace .hub] [--out docs/dagster-asset-graph.png] [--port 3311]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dagster_project.instance import ensure_home

DOCS = Path(__file__).resolve().parent
LINEAGE = "/asset-groups"  # the UI's global asset lineage page
GROUPS = ("sources", "recognition", "serving", "research", "trainsets", "indicators")
NODES = ("sources/his", "recognition/observation", "recognition/index", "research/release", "indicators/outcomes")


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"dagster dev exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url + "/server_info", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise SystemExit(f"dagster dev did not answer at {url} within {timeout:.0f} s")


def screenshot(url: str, out: Path, width: int, height: int, timeout: float = 120.0) -> list[str]:
    """Open url in headless Chromium, wait for the graph's nodes, save a PNG; returns the node labels found."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_window_size(width, height)
        driver.get(url + LINEAGE)
        time.sleep(2)
        # the UI keeps these in localStorage: every group expanded, sources on top and tables in one row
        driver.execute_script(
            "localStorage.setItem(arguments[0], JSON.stringify({expanded: arguments[1]}));"
            "localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'));",
            "asset-graph-open-graph-nodes-global-__GLOBAL__", ",".join(f"global@global:{g}" for g in GROUPS))
        driver.refresh()
        found = _wait_for_nodes(driver, out, timeout)
        for b in driver.find_elements("css selector", "button, a"):
            if b.text.strip() == "Hide navigation":
                b.click()
                break
        time.sleep(2)
        _zoom_to_fit(driver)
        time.sleep(5)  # let the materialization and check badges load
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return found
    finally:
        driver.quit()


def _wait_for_nodes(driver, out: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        text = driver.find_element("tag name", "body").text
        found = [n for n in NODES if n.split("/")[-1] in text.split()]
        if len(found) == len(NODES):
            return found
        time.sleep(2)
    failed = out.with_suffix(".failed.png")
    driver.save_screenshot(str(failed))
    raise SystemExit(f"the asset graph did not show {', '.join(sorted(set(NODES) - set(found)))} within {timeout:.0f} s "
                     f"(the page as it was: {failed})")


def _graph_fits(driver) -> bool:
    """True when the label of every node of NODES, and of the first and last table, lies inside the graph's part of the window."""
    return bool(driver.execute_script("""
        const names = arguments[0], w = window.innerWidth, h = window.innerHeight;
        const search = document.querySelector('[aria-label="Search and filter assets"]');
        const left = search ? search.getBoundingClientRect().left : 0;  // the graph starts under the search bar
        const seen = new Set();
        for (const el of document.querySelectorAll('div, span')) {
            const t = (el.childElementCount === 0 ? el.textContent.trim() : '');
            if (!names.includes(t)) continue;
            const r = el.getBoundingClientRect();
            if (r.width === 0 || r.left < left + 20 || r.top < 60 || r.right > w - 60 || r.bottom > h) return false;
            seen.add(t);
        }
        return seen.size === names.length;
    """, [n.split("/")[-1] for n in NODES] + ["specimen", "condition"]))


def _zoom_to_fit(driver, steps: int = 6) -> None:
    """Zoom in (the UI's zoom button) while the whole graph stays in the window, for readable nodes."""
    def click(icon: str) -> None:
        driver.execute_script("arguments[0].closest('button').click()", driver.find_element("css selector", f"[aria-label={icon}]"))
        time.sleep(1.5)

    for _ in range(steps):
        click("zoom_in")
        if not _graph_fits(driver):
            click("zoom_out")
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path(".hub"), help="a workspace `make demo` made (default .hub)")
    ap.add_argument("--out", type=Path, default=DOCS / "dagster-asset-graph.png")
    ap.add_argument("--port", type=int, default=3311)
    ap.add_argument("--size", default="2560x1440", help="window size, WIDTHxHEIGHT")
    args = ap.parse_args()
    ws = args.workspace.resolve()
    if not (ws / "region.yaml").exists():
        raise SystemExit(f"no region.yaml in {ws}: run `make demo` first (or pass --workspace)")
    os.umask(0o077)  # as `hub dagster` does: what dagster dev writes in the workspace is its owner's alone
    env = {**os.environ, "DAGSTER_HOME": str(ensure_home(ws)), "HUB_WORKSPACE": str(ws)}
    url = f"http://127.0.0.1:{args.port}"
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1", "-p", str(args.port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_server(url, proc)
        width, height = (int(v) for v in args.size.split("x"))
        found = screenshot(url, args.out, width, height)
        print(f"{args.out}: asset graph of {ws} ({', '.join(found)} drawn)")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # dagster dev's own group: its webserver, daemon and code server
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
