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
