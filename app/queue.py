"""Celery configuration shared by the API (which only sends tasks, by name) and the worker."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

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
