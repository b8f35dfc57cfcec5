"""Real photographs that ship inside an installed package: scikit-image's wheel (``skimage/data``).

Read straight from the package folder: no download, no ``pooch``, not even ``import skimage``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def photo_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-image is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def photo(name: str) -> bytes:
    """The bytes of ``skimage/data/NAME`` (e.g. chelsea.png, a 451×300 photo of a cat)."""
    path = photo_dir() / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this scikit-image wheel")
    return path.read_bytes()
