"""The Celery app of the worker: ``celery -A worker.celery_app worker`` (see ``app.commands``).

Reliability settings come from ``core.queue.celery_config`` (late acks, requeue on a lost worker,
prefetch 1, one job at a time, visibility timeout above the hard time limit). The main worker
process publishes the model catalog into Redis and keeps a heartbeat, and each beat its reaper
requeues the jobs of workers that stopped beating (``core.reaper``); models are loaded lazily
once per pool process (after fork), see ``worker.tasks``. Pool processes die with the main one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import redis
from celery import Celery, signals

from core.logs import configure_logging
from core.queue import capture_template, celery_config, queue_key
from core.reaper import Reaper
from core.settings import get_settings
from core.store import JobStore
from core.webhooks import Emitter

settings = get_settings()
app = Celery("tivis", include=["worker.tasks", "worker.atlas_tasks"])
app.conf.update(celery_config(settings))
log = logging.getLogger("tivis.worker")
_worker_name: str | None = None
_controller: Any = None  # the WorkController (its pool runs the jobs)


def worker_name() -> str:
    """This worker's heartbeat name, ``<nodename>:<main pid>`` (pool processes inherit it), as
    jobs record it; empty outside a worker."""
    return _worker_name or ""


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _init(sender: Any = None, **_: Any) -> None:
    """Before the pool forks: name this worker once, for the heartbeat and the job records."""
    global _worker_name, _controller
    host = getattr(sender, "hostname", None) or socket.gethostname()
    _worker_name = f"{host}:{os.getpid()}"
    _controller = sender


def pool_processes() -> list[int] | None:
    """The live pool processes of this worker (prefork: the processes that run the jobs), as
    its heartbeat publishes them; ``None`` when the pool does not tell (another pool kind)."""
    try:
        pids = [int(p) for p in _controller.pool.info["processes"]]
    except Exception:
        return None
    live = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        live.append(pid)
    return live


@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _logging(**_: Any) -> None:
    configure_logging(settings.log_level)


def catalog_entries() -> dict[str, dict[str, Any]]:
    """What this worker can run: per available model its description and labels."""
    from worker.engine.models import Registry

    reg = Registry(settings.models_dir, settings.weights_dir, settings.torch_home)
    now = time.time()
    return {
        m.name: {"info": m.describe(), "labels": list(m.labels), "updated": now}
        for m in reg.available()
    }


def expire_artifacts() -> int:
    """Delete artifact files older than the TTL (their job records are gone by then)."""
    from core.artifacts import store_from_settings

    n = store_from_settings(settings).expire(settings.ttl_seconds)
    if n:
        log.info("expired artifacts deleted", extra={"count": n})
    return n


class Heartbeat:
    """Publishes the catalog, then refreshes ``P:worker:<name>`` every ``heartbeat_seconds``
    (the key lives three beats; it lists the live pool processes) and the catalog every minute,
    until stopped; after each beat a reaper pass (requeue the jobs of lost workers and of dead
    pool processes)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop_event = threading.Event()
        self.store = JobStore(
            redis.Redis.from_url(settings.redis_url), settings.key_prefix, settings.ttl_seconds
        )
        self.models: list[str] = []
        self.reaper: Reaper | None = None
        self.thread = threading.Thread(target=self._run, name="tivis-heartbeat", daemon=True)

    def publish(self) -> None:
        entries = catalog_entries()
        self.store.publish_catalog(entries)
        self.models = sorted(entries)

    def beat(self) -> None:
        # the time first, then the pool: a job started before ``at`` whose process is not
        # listed has lost it (``runner_alive`` in ``core.store``)
        at = time.time()
        pool = pool_processes()
        info: dict[str, Any] = {
            "name": self.name,
            "pid": os.getpid(),
            "models": self.models,
            "device": settings.device,
            "at": at,
        }
        if pool is not None:
            info["pool"] = pool
        self.store.heartbeat(self.name, info, ttl=3 * settings.heartbeat_seconds)

    def _run(self) -> None:
        last_publish = time.monotonic()
        last_cleanup = time.monotonic()
        while not self.stop_event.wait(settings.heartbeat_seconds):
            try:
                if time.monotonic() - last_publish > 60:
                    self.publish()
                    last_publish = time.monotonic()
                self.beat()
                if self.reaper is not None:
                    self.reaper.sweep()
                if time.monotonic() - last_cleanup > settings.artifacts_cleanup_seconds:
                    last_cleanup = time.monotonic()
                    expire_artifacts()
            except Exception:
                log.exception("heartbeat failed", extra={"worker": self.name})

    def start(self) -> None:
        self.publish()
        self.beat()
        template = capture_template(self.store.r, app, settings)
        self.reaper = Reaper(self.store, queue_key(settings), template.render)
        self.thread.start()
        log.info("worker ready", extra={"worker": self.name, "models": self.models})

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.store.drop_worker(self.name)
        except Exception:
            log.exception("could not drop heartbeat", extra={"worker": self.name})


_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    host = getattr(sender, "hostname", None) or socket.gethostname()
    _heartbeat = Heartbeat(_worker_name or f"{host}:{os.getpid()}")
    _heartbeat.start()


@signals.worker_shutdown.connect  # type: ignore[untyped-decorator]
def _shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.task_failure.connect  # type: ignore[untyped-decorator]
def _task_failure(
    task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """Safety net: a job whose task died without recording its end is marked failed. A hard
    time limit kills the pool process (this then runs in the main process); an exception that
    escaped the task's own handling (e.g. a soft time limit during start-up) runs it in the
    pool process."""
    if task_id is None or exception is None:
        return
    store = JobStore(
        redis.Redis.from_url(settings.redis_url), settings.key_prefix, settings.ttl_seconds
    )
    rec = store.get(task_id)
    if rec is None or rec["status"] != "running":
        return
    name = type(exception).__name__
    if name in ("TimeLimitExceeded", "SoftTimeLimitExceeded"):
        err = {"type": "TimeLimitExceeded", "message": f"the job ran out of time ({exception})"}
    else:
        err = {"type": name, "message": str(exception)}
    started = rec.get("started_at") or time.time()
    if store.finish(task_id, rec["attempts"], "failed", {"error": err}, kind=str(rec["kind"]),
                    duration=time.time() - started):  # fmt: skip
        Emitter(store.r, settings.key_prefix, settings.ttl_seconds).safe_emit(task_id, "failed")
    log.error("job failed outside the task", extra={"job_id": task_id, "error": err})


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _process_init(**_: Any) -> None:
    """In each pool process after fork: die with the main process (Linux), so a lost worker's
    job never runs on beside its requeued attempt; fresh Redis connections and registry, built
    here rather than in the first task, so a job's time limit never counts the process's start."""
    from worker import tasks

    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    if settings.tune_malloc:
        from worker import malloc

        malloc.tune()
    tasks.reset_state()
    tasks.state()
