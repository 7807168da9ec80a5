"""The status page and the API page in a real browser: headless system Chromium driven by
playwright-core (tests/browser/pages.mjs), against the live server while `rtserve bench` loads
it. Skipped when Chromium, Node.js or tests/browser/node_modules is missing, unless
RTSERVE_CI_REQUIRE_BROWSER is set (CI), where that is a failure.

Environment: CHROMIUM (default /usr/bin/chromium); RTSERVE_SCREENSHOT_DIR, where the two
screenshots go (default a temporary folder; docs/ holds the committed ones).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
MODEL = "two_io"


def _require(what: str, present: bool) -> None:
    if present:
        return
    if os.environ.get("RTSERVE_CI_REQUIRE_BROWSER"):
        pytest.fail(f"{what} is missing and RTSERVE_CI_REQUIRE_BROWSER is set")
    pytest.skip(f"{what} is missing (apt-get install chromium nodejs npm; npm ci --prefix tests/browser)")


def _binary() -> Path:
    binary = Path(os.environ.get("RTSERVE_BIN", "target/debug/rtserve"))
    return binary if binary.is_absolute() else REPO_ROOT / binary


def test_status_page_follows_the_load_and_docs_runs_an_inference(rtserve, tmp_path):
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    _require(f"Chromium ({chromium})", Path(chromium).exists())
    _require("Node.js", shutil.which("node") is not None)
    _require("playwright-core (tests/browser/node_modules)", (BROWSER_DIR / "node_modules" / "playwright-core").is_dir())
    shots = Path(os.environ.get("RTSERVE_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    base = f"http://{rtserve.http_url}"
    load = subprocess.Popen(
        [str(_binary()), "bench", "--url", base, "--model", MODEL, "--concurrency", "2",
         "--warmup", "0s", "--duration", "90s", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = subprocess.run(
            ["node", str(BROWSER_DIR / "pages.mjs"), base, str(shots), MODEL],
            capture_output=True, text=True, timeout=120, env={**os.environ, "CHROMIUM": chromium},
        )
    finally:
        load.terminate()
        load.wait(timeout=10)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"browser checks failed:\n{done.stdout}\n{done.stderr}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["docs"]["status"] == "200", summary
    assert (shots / "status-page.png").stat().st_size > 0
    assert rtserve.process.poll() is None
