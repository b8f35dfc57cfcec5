"""The dashboard's files as the API serves them (no browser needed): the page and its ES modules
from the app's static mount, every module import resolves, and nothing from the internet."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import STATIC, create_app
from core.settings import Settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(Settings()))  # no lifespan: static files need no Redis


def test_index_and_modules(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
        assert client.get(src).status_code == 200, src
    js = client.get("/static/js/main.js")
    assert "javascript" in js.headers["content-type"]


def test_every_module_import_resolves() -> None:
    for path in sorted(STATIC.rglob("*.js")):
        text = path.read_text()
        for dep in re.findall(r'from "(\./[^"]+)"', text):
            assert (path.parent / dep).is_file(), f"{path.name} imports missing {dep}"


def test_nothing_from_the_internet() -> None:
    for path in sorted(STATIC.rglob("*")):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text()
            assert not re.search(r"https?://(?!tivis\.dev|www\.w3\.org/2000/svg)", text), path


@pytest.mark.parametrize("path", ["../main.py", "..%2F..%2Fcore%2Fsettings.py", "nope.js"])
def test_no_escape(client: TestClient, path: str) -> None:
    assert client.get(f"/static/{path}").status_code == 404
