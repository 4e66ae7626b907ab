"""End-to-end fixtures: a real ``streamlit run`` server and Debian chromium driven by Playwright.

Reusable by every e2e test in this folder:

``app_server``          session-wide server on a free localhost port; yields its base URL.
                        Uses the runs in ``XRCOMPARE_RUNS_DIR`` if set, else ``trained/``.
                        ``XRCOMPARE_E2E_BASE_URL`` points the tests at a server already running.
``start_app_server``    session-wide factory: ``start_app_server({"XRCOMPARE_RUNS_DIR": ...})``
                        starts (once per distinct environment) another server with those
                        environment overrides and returns its base URL;
                        ``start_app_server.server_at(url)`` is its :class:`StreamlitServer`
                        (``.process.pid`` for memory measurements).
``browser``             one headless chromium for the session (never ``playwright install``).
``browser_page``        a fresh page (own context, 1440×1000) per test; console errors are
                        collected in ``browser_page.console_errors``.
``app``                 an :class:`AppDriver` on ``browser_page`` + ``app_server``:
                        ``app.open("tradeoffs")``, ``app.wait_idle()``, ``app.problems()``,
                        ``app.click_nav("Dataset")``, ``app.screenshot("name")``.
``app_at``              factory: ``app_at(url)`` gives an AppDriver for another server.

Mark e2e tests with ``@pytest.mark.e2e``. Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = os.environ.get("XRCOMPARE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_TIMEOUT_S = float(os.environ.get("XRCOMPARE_E2E_START_TIMEOUT", "120"))
PAGE_TIMEOUT_MS = int(float(os.environ.get("XRCOMPARE_E2E_PAGE_TIMEOUT", "60")) * 1000)

#: Elements that mean the app failed: an uncaught exception or an ``st.error`` box.
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')
RUNNING_SELECTOR = '[data-testid="stStatusWidgetRunningIcon"]'
#: Placeholders shown while an element's code is still loading in the browser.
LOADING_SELECTOR = ('[data-testid="stSkeleton"], [data-testid="stSkeletonElement"], '
                    '[data-testid="stAppSkeleton"]')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


class StreamlitServer:
    """``streamlit run streamlit_app.py`` on a free port, its output in a log file."""

    def __init__(self, env_overrides: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"e2e-server-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_overrides or {})}
        command = [sys.executable, "-m", "streamlit", "run", str(REPO / "streamlit_app.py"),
                   "--server.headless=true", f"--server.port={self.port}",
                   "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
                   "--server.fileWatcherType=none"]
        self.log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.process.returncode}:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"streamlit did not answer within {timeout:.0f} s:\n"
                           + self.log_tail())

    def log_tail(self, characters: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-characters:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.log.close()


@pytest.fixture(scope="session")
def start_app_server():
    """Factory: ``start_app_server(env_overrides) -> base URL``, one server per environment."""
    servers: dict[tuple, StreamlitServer] = {}

    def start(env_overrides: dict[str, str] | None = None) -> str:
        key = tuple(sorted((env_overrides or {}).items()))
        if key not in servers:
            server = StreamlitServer(env_overrides)
            servers[key] = server
            try:
                server.wait_ready()
            except RuntimeError as error:
                pytest.fail(str(error))
        return servers[key].url

    def server_at(url: str) -> StreamlitServer:
        return next(server for server in servers.values() if server.url == url)

    start.server_at = server_at
    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def app_server(start_app_server) -> str:
    """Base URL of the dashboard serving ``XRCOMPARE_RUNS_DIR`` (default ``trained/``)."""
    existing = os.environ.get("XRCOMPARE_E2E_BASE_URL", "").strip()
    if existing:
        return existing.rstrip("/")
    runs_dir = os.environ.get("XRCOMPARE_RUNS_DIR") or str(REPO / "trained")
    return start_app_server({"XRCOMPARE_RUNS_DIR": runs_dir})


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Debian chromium is expected at {CHROMIUM}")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        yield instance
        instance.close()


@pytest.fixture
def browser_page(browser):
    """A fresh page in its own context; ``page.console_errors`` lists console errors."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.console_errors = []
    page.on("console", lambda message: page.console_errors.append(message.text)
            if message.type == "error" else None)
    yield page
    context.close()


class AppDriver:
    """Small helpers to drive the dashboard in a Playwright page."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url.rstrip("/")

    def open(self, url_path: str = "", *, wait_for_title: bool = True):
        """Load ``<base>/<url_path>`` (a page's url path, e.g. ``"tradeoffs"``) and wait."""
        self.page.goto(f"{self.base_url}/{url_path.lstrip('/')}", wait_until="domcontentloaded")
        self.page.wait_for_selector('[data-testid="stApp"]')
        if wait_for_title:
            self.page.wait_for_selector('[data-testid="stMain"] h1')
        self.wait_idle()
        return self.page

    def wait_idle(self, quiet_ms: int = 600, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
        """Wait until the script has not been running for ``quiet_ms``, no element is still
        loading, and plotly charts are drawn."""
        deadline = time.monotonic() + timeout_ms / 1000
        quiet_since = None
        while time.monotonic() < deadline:
            running = self.is_running() or self.page.locator(LOADING_SELECTOR).count() > 0
            if running:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif (time.monotonic() - quiet_since) * 1000 >= quiet_ms:
                break
            self.page.wait_for_timeout(100)
        else:
            raise AssertionError("the app kept running past the timeout")
        charts = self.page.locator('[data-testid="stPlotlyChart"]')
        for index in range(charts.count()):
            charts.nth(index).locator(".main-svg").first.wait_for(state="attached")

    def settle(self) -> None:
        """Wait until idle, allowing for a loaded machine (a rerun that starts a job)."""
        self.wait_idle(quiet_ms=500, timeout_ms=90_000)

    def until(self, check, timeout_ms: int = PAGE_TIMEOUT_MS, what: str = "") -> None:
        """Poll ``check()`` (no fixed sleep) until it is true; else raise
        :meth:`not_seen`'s error."""
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline:
            if check():
                return
            self.page.wait_for_timeout(200)
        raise self.not_seen(what or str(check), timeout_ms)

    def not_seen(self, what: str, timeout_ms: int) -> AssertionError:
        """The error of :meth:`until` when ``what`` did not show in time."""
        return AssertionError(f"{what} not seen within {timeout_ms / 1000:.0f} s")

    def click_until(self, locator, done, what: str, tries: int = 3) -> None:
        """Click ``locator``, and click again only while ``done()`` is false once the app is
        idle and the control is still there: a click that lands while a rerun replaces the
        sidebar is lost, as it would be for a person, who clicks again (so is one that finds
        no control during a rerun longer than the page's timeout)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        for _ in range(tries):
            try:
                locator.click()
            except PlaywrightTimeoutError:  # not there all along a long rerun: once idle
                self.settle()
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not done():
                self.page.wait_for_timeout(200)
            self.settle()
            if done() or not locator.is_visible():
                break
        self.until(done, what=what)

    def is_running(self) -> bool:
        """Whether the script runs now (the app's ``data-test-script-state``)."""
        state = self.page.locator('[data-testid="stApp"]').first.get_attribute(
            "data-test-script-state")
        return state in (None, "initial", "running", "rerunRequested") or \
            self.page.locator(RUNNING_SELECTOR).count() > 0

    def click_nav(self, title: str, heading: str | None = None) -> float:
        """Switch page with the sidebar menu, as a user would; return the seconds until the
        new page's heading (``heading``, default ``title``) and its charts are drawn."""
        started = time.perf_counter()
        self.page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
        self.page.locator('[data-testid="stMain"] h1', has_text=heading or title).first.wait_for()
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while self.is_running() and time.monotonic() < deadline:
            self.page.wait_for_timeout(25)
        charts = self.page.locator('[data-testid="stPlotlyChart"]')
        for index in range(charts.count()):
            charts.nth(index).locator(".main-svg").first.wait_for(state="attached")
        seconds = time.perf_counter() - started
        self.wait_idle()
        return seconds

    def problems(self) -> list[str]:
        """Texts of exception and error boxes on the page (empty when all is well)."""
        found = []
        for selector in ERROR_SELECTORS:
            boxes = self.page.locator(selector)
            found += [boxes.nth(i).inner_text()[:300] for i in range(boxes.count())]
        return found

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        """Save ``test-artifacts/screenshots/<name>.png``; ``full_page`` grows the viewport to
        the main area's height first (Streamlit scrolls inside the page, not the document)."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        viewport = self.page.viewport_size
        if full_page and viewport:
            height = self.page.evaluate(
                "() => Math.max(...['stMain', 'stSidebarContent'].map(id => {"
                " const e = document.querySelector(`[data-testid=${id}]`);"
                " return e ? e.scrollHeight : 0; }))")
            self.page.set_viewport_size({"width": viewport["width"],
                                         "height": int(min(max(height, viewport["height"]),
                                                           12000))})
            self.wait_idle(quiet_ms=300)
        try:
            self.page.screenshot(path=str(path))
        finally:
            if full_page and viewport:
                self.page.set_viewport_size(viewport)
        return path


@pytest.fixture
def app(browser_page, app_server) -> AppDriver:
    return AppDriver(browser_page, app_server)


@pytest.fixture
def app_at(browser_page):
    """Factory: ``app_at(base_url)`` → an :class:`AppDriver` for another server (for
    instance one from ``start_app_server``) on this test's page."""
    return lambda base_url: AppDriver(browser_page, base_url)
