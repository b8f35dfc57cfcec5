"""The worker's settings and task state pointed at a test's own Redis prefix, artifact store and
models, for calling its tasks in process (no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def worker_env(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    prefix: str,
    artifacts_url: str,
    models_dir: Path,
    **extra: str,
) -> Iterator[None]:
    """Within the block the worker reads these settings (``TIVIS_<NAME>`` for each of
    ``extra``), on the CPU; its cached settings and task state are reset on entry and on exit."""
    from core.settings import get_settings
    from worker import tasks

    env = {"TIVIS_REDIS_URL": redis_url, "TIVIS_KEY_PREFIX": prefix,
           "TIVIS_ARTIFACTS_URL": artifacts_url, "TIVIS_MODELS_DIR": str(models_dir),
           "TIVIS_DEVICE": "cpu"}  # fmt: skip
    env.update({f"TIVIS_{k.upper()}": v for k, v in extra.items()})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    tasks.reset_state()
    try:
        yield
    finally:
        get_settings.cache_clear()
        tasks.reset_state()
