"""Celery configuration shared by the API (which only sends tasks, by name) and the worker."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any, cast

import redis
from celery import Celery

from core.settings import Settings

RUN_JOB_TASK = "tivis.run_job"
"""Every job kind runs through this one task; it reads the job's kind and spec from Redis."""


def broker_prefix(settings: Settings) -> str:
    """Kombu's keys (queues, unacked messages) live under the service's prefix too."""
    return f"{settings.key_prefix}:broker:"


def queue_key(settings: Settings) -> str:
    """The Redis list holding the queued messages (its length is the queue depth)."""
    return broker_prefix(settings) + settings.queue


def celery_config(settings: Settings) -> dict[str, Any]:
    """Reliability settings: late acks, requeue on a lost worker, one job at a time, a broker
    visibility timeout longer than the hard time limit, no result backend (records are ours)."""
    vt = settings.effective_visibility_timeout
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {
            "visibility_timeout": vt,
            "global_keyprefix": broker_prefix(settings),
            # sweep for messages of lost workers every few seconds (kombu's default is
            # every 10 x 10 s), so redelivery comes soon after the visibility timeout
            "unacked_restore_interval": min(10, max(1, vt // 5)),
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_routes": {RUN_JOB_TASK: {"queue": settings.queue}},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


class MessageTemplate:
    """A Celery task message for ``tivis.run_job``, as Celery itself wrote it, with the job id
    left open: rendering it for a job gives the bytes ``send_task`` would have pushed, so the
    API can push it in the same Redis transaction that creates the job record (atomic, one
    round trip, no per-request Celery/kombu work). Captured once per process at startup by
    sending one real message to a scratch queue and taking it back."""

    MARK = "0" * 31 + "1"

    def __init__(self, raw: bytes | str, scratch_queue: str, queue: str) -> None:
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        if not (isinstance(body, list) and body[0] == [self.MARK]):
            raise ValueError(f"unexpected Celery message body {body!r}")
        self._tail = body[1:]
        msg["body"] = "@@BODY@@"
        msg["properties"]["delivery_tag"] = "@@TAG@@"
        text = json.dumps(msg, separators=(",", ":")).replace(scratch_queue, queue)
        if "@@" in text.replace("@@BODY@@", "").replace("@@TAG@@", ""):
            raise ValueError("message template holds a placeholder")
        self._text = text

    def render(self, job_id: str) -> str:
        body = json.dumps([[job_id], *self._tail], separators=(",", ":"))
        return (
            self._text.replace(self.MARK, job_id)
            .replace("@@BODY@@", base64.b64encode(body.encode()).decode())
            .replace("@@TAG@@", str(uuid.uuid4()))
        )


def scratch_queue(settings: Settings) -> str:
    return f"{settings.queue}.template-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def send_template(celery: Celery, queue: str) -> None:
    """Send the template message (job id ``MessageTemplate.MARK``) to ``queue``."""
    celery.send_task(RUN_JOB_TASK, args=[MessageTemplate.MARK], task_id=MessageTemplate.MARK,
                     queue=queue)  # fmt: skip


def capture_template(client: redis.Redis, celery: Celery, settings: Settings) -> MessageTemplate:
    """Have Celery write one ``tivis.run_job`` message to a scratch queue and take it back (the
    worker's reaper; the API has an async twin in ``app.main``)."""
    scratch = scratch_queue(settings)
    send_template(celery, scratch)
    prefix = broker_prefix(settings)
    raw = cast(bytes | None, client.rpop(prefix + scratch))
    client.delete(prefix + scratch, f"{prefix}_kombu.binding.{scratch}")
    if raw is None:
        raise RuntimeError("could not capture the Celery message template")
    return MessageTemplate(raw, scratch, settings.queue)
