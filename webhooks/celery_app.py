"""The webhook worker: ``celery -A webhooks.celery_app worker`` (see ``app.commands``).

Its own Celery app and queue (``TIVIS_WEBHOOK_QUEUE``, default ``webhooks``), threads instead of
processes, no torch: a slow or dead receiver holds one of its threads, never a GPU worker. The
main process runs the dispatcher: every ``TIVIS_WEBHOOK_POLL_SECONDS`` it claims the due
deliveries (``core.webhooks.claim_due``) and sends ``tivis.webhook.deliver`` by name for each.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery, signals

from core import webhooks
from core.logs import configure_logging
from core.settings import get_settings

settings = get_settings()
app = Celery("tivis-webhooks")
app.conf.update(webhooks.celery_config(settings))
log = logging.getLogger("tivis.webhooks")
_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.redis_url)
    return _client


@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _logging(**_: Any) -> None:
    configure_logging(settings.log_level)


@app.task(name=webhooks.DELIVER_TASK)  # type: ignore[untyped-decorator]
def deliver(member: str) -> str:
    """One attempt of one delivery (``<job id>|<name>``)."""
    return webhooks.deliver(client(), settings, member)


class Dispatcher:
    """Claims due deliveries and queues their tasks, until stopped."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tivis-webhook-dispatch", daemon=True)
        self.lease = webhooks.lease_seconds(settings)

    def tick(self) -> int:
        members = webhooks.claim_due(client(), settings.key_prefix, lease=self.lease)
        for m in members:
            app.send_task(webhooks.DELIVER_TASK, args=[m], queue=settings.webhook_queue)
        return len(members)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                while self.tick() and not self.stop_event.is_set():
                    pass  # a full batch: look again at once
            except Exception:
                log.exception("webhook dispatch failed")
            self.stop_event.wait(settings.webhook_poll_seconds)


_dispatcher: Dispatcher | None = None


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    global _dispatcher
    _dispatcher = Dispatcher()
    _dispatcher.thread.start()
    log.info("webhook worker ready", extra={"queue": settings.webhook_queue})


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown(**_: Any) -> None:
    if _dispatcher is not None:
        _dispatcher.stop_event.set()
