"""The dashboard's files as the API serves them (no browser needed): the page, its ES modules
with a JavaScript media type, no escaping the static folder, and nothing from the internet."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app import problems
from app.routes import dashboard


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    problems.install(app)
    app.include_router(dashboard.router)
    return TestClient(app)


def test_index_and_modules(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        assert client.get(src).status_code == 200, src
    js = client.get("/static/js/main.js")
    assert js.headers["content-type"].startswith("text/javascript")


def test_every_module_import_resolves(client: TestClient) -> None:
    for path in sorted(dashboard.STATIC.rglob("*.js")):
        text = path.read_text()
        for dep in re.findall(r'from "(\./[^"]+)"', text):
            assert (path.parent / dep).is_file(), f"{path.name} imports missing {dep}"


def test_nothing_from_the_internet() -> None:
    for path in sorted(dashboard.STATIC.rglob("*")):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text()
            assert not re.search(r"https?://(?!tivis\.dev|www\.w3\.org/2000/svg)", text), path


@pytest.mark.parametrize("path", ["../routes/dashboard.py", "..%2F..%2Fsettings.py", "nope.js"])
def test_no_escape(client: TestClient, path: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
