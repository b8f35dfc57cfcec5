"""Fast recovery of lost jobs: requeue (or cancel) the running jobs of workers that stopped
beating, or whose pool process died under a live worker (its heartbeat lists its live pool
processes), long before the broker's visibility timeout would redeliver them.

Every worker's heartbeat thread runs a :class:`Reaper` pass each beat, and every API process
runs one in a thread (:func:`reap_every`), so jobs are recovered, and canceled orphans end, even
while no worker is alive. A job is claimed only when its process was gone on two passes in a row
(its worker's heartbeat key, three beats long, expired, or a heartbeat taken after the job
started no longer lists that pool process), and the claim is one Lua step (``JobStore.reap``)
that checks again and pushes the new broker message itself, so of many reapers exactly one
requeues a job, exactly once. The attempt that died stays counted; the next start counts the new
one (and fails the job after ``TIVIS_MAX_ATTEMPTS``). A late redelivery of the dead worker's old
message is skipped by ``start`` while the new attempt runs on a live process, and does nothing
once the job has finished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.store import JobStore
from core.webhooks import Emitter

log = logging.getLogger("tivis.reaper")


class Reaper:
    """Claims the jobs of lost workers; call :meth:`sweep` about once per heartbeat."""

    def __init__(self, store: JobStore, queue: str, message: Callable[[str], str]) -> None:
        """``queue``: the broker's Redis list; ``message(job_id)``: its Celery message."""
        self.store = store
        self.queue = queue
        self.message = message
        self.suspects: set[tuple[str, str]] = set()

    def sweep(self) -> list[tuple[str, str, int]]:
        """One pass; returns ``(job id, verdict, attempts)`` of the jobs claimed now."""
        try:
            running = self.store.running_jobs()
            lost = self.store.lost_jobs(running)
        except Exception:
            self.suspects = set()  # a fresh start after Redis trouble: two clean passes again
            raise
        missing = {(job, w) for job, w in running.items() if job in lost}
        ready, self.suspects = missing & self.suspects, missing - self.suspects
        claimed: list[tuple[str, str, int]] = []
        for job_id, worker in sorted(ready):
            verdict, attempts = self.store.reap(job_id, worker, self.queue, self.message(job_id))
            if verdict in ("requeued", "canceled"):
                claimed.append((job_id, verdict, attempts))
                if verdict == "canceled":
                    Emitter(self.store.r, self.store.keys.prefix, self.store.ttl).safe_emit(
                        job_id, "canceled"
                    )
                log.warning(
                    "job of a lost worker " + verdict,
                    extra={"job_id": job_id, "lost_worker": worker, "attempts": attempts},
                )
        return claimed


def reap_every(reaper: Reaper, seconds: float, stop: threading.Event) -> None:
    """A reaper pass every ``seconds`` until ``stop`` is set (a thread's target)."""
    while not stop.wait(seconds):
        try:
            reaper.sweep()
        except Exception:
            log.exception("reaper pass failed")
