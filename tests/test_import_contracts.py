"""The import contracts of ``pyproject.toml`` (``[tool.importlinter]``) hold: the engine imports
no worker, Celery, Redis or app code; the API no torch or worker; the worker no FastAPI; core and
specs none of them. Runs ``lint-imports`` on this checkout, as CI does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> str:
    here = Path(sys.executable).parent / "lint-imports"
    found = str(here) if here.exists() else shutil.which("lint-imports")
    assert found, "lint-imports is missing: install the dev extra (import-linter)"
    return found


def test_import_contracts_are_kept() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [lint_imports(), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kept = len(contracts["contracts"])
    assert "0 broken" in out and f"{kept} kept" in out, out
