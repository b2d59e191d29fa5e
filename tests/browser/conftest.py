"""The built book served on localhost and a headless Chromium driven by selenium.

These tests run through ``make check-widgets`` (after ``make book``), which sets
``EFFSMALL_BROWSER=1``; otherwise they are skipped. Chromium and its driver come from the
system (Debian: ``chromium chromium-driver``; override with ``CHROME_BIN`` / ``CHROMEDRIVER``).
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "widget-screenshots"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EFFSMALL_BROWSER"):
        return
    skip = pytest.mark.skip(reason="browser test: run `make check-widgets` after `make book`")
    for item in items:
        if "tests/browser" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def book_url():
    if not (BOOK / "index.html").exists():
        pytest.fail(f"no built book at {BOOK}: run `make book` first")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(BOOK)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _find(env: str, names: list[str], extra_dirs: list[str] = ()) -> str:
    if os.environ.get(env):
        return os.environ[env]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        for d in extra_dirs:
            if d and Path(d, name).exists():
                return str(Path(d, name))
    pytest.fail(f"none of {names} found; install Chromium and its driver (Debian: apt-get install chromium "
                f"chromium-driver) or set {env}")


@pytest.fixture(scope="session")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1400", "--hide-scrollbars",
                # offline like CI, whatever the machine: every host but localhost fails to resolve, so
                # the explorers are shown to need nothing from a CDN (MathJax, fonts) to work
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.binary_location = _find("CHROME_BIN", ["chromium", "chromium-browser", "google-chrome"])
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = _find("CHROMEDRIVER", ["chromedriver"], [os.environ.get("CHROMEWEBDRIVER", "")])
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
