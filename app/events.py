"""Event streams without a Redis connection per stream.

One :class:`EventHub` per API process polls the records of every job that some open stream
follows, in one pipelined round trip every ``TIVIS_EVENTS_POLL_SECONDS``, on a Redis client of
its own (one connection), and wakes the streams whose job it read. However many streams are open,
they hold no connection of the pool that submissions use, and the number of open streams is capped
(``TIVIS_MAX_EVENT_STREAMS``): past it a stream is refused (503 with ``Retry-After``), never a
submission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from core.store import AsyncJobStore, decode_record

log = logging.getLogger("tivis.api")
BATCH = 500
"""Records read per pipeline."""


class HubFull(Exception):
    """The process already serves ``TIVIS_MAX_EVENT_STREAMS`` streams."""


class Subscription:
    """One open stream's view of its job: the last record read and a wake-up flag."""

    def __init__(self, hub: EventHub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.changed = asyncio.Event()
        self.record: dict[str, Any] | None = None
        self.read = False  # whether the hub has read the record once since subscribing
        self.since = hub.polls  # polls started before it subscribed

    async def next(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the hub's next read of the record; False on timeout."""
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True

    def close(self) -> None:
        self.hub.unsubscribe(self)


class EventHub:
    """Follows the jobs of this process's open streams with one Redis connection."""

    def __init__(self, store: AsyncJobStore, limit: int, interval: float) -> None:
        self.store = store
        self.limit = limit
        self.interval = interval
        self.subs: dict[str, set[Subscription]] = {}
        self.last: dict[str, Any] = {}  # job id -> the raw record read last
        self.open = 0
        self.polls = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, job_id: str) -> Subscription:
        """A stream's place; :class:`HubFull` when ``limit`` streams are open."""
        if self.open >= self.limit:
            raise HubFull
        sub = Subscription(self, job_id)
        self.subs.setdefault(job_id, set()).add(sub)
        self.open += 1
        self._wake.set()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.subs.get(sub.job_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self.open -= 1
        if not subs:
            del self.subs[sub.job_id]
            self.last.pop(sub.job_id, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if not self.subs:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self.poll()
            except Exception:
                log.exception("event hub: reading job records failed; retrying")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        """Read every followed record (pipelined, :data:`BATCH` per round trip); wake the
        streams whose record changed, and those the hub has not read for yet (a stream starts
        from the route's own read; one that subscribed while this poll was under way waits for
        the next, whose read is surely newer)."""
        self.polls += 1
        started = self.polls
        ids = list(self.subs)
        for i in range(0, len(ids), BATCH):
            part = ids[i : i + BATCH]
            pipe = self.store.r.pipeline(transaction=False)
            for job_id in part:
                pipe.hgetall(self.store.keys.job(job_id))
            raws = await pipe.execute()
            for job_id, raw in zip(part, raws, strict=True):
                subs = self.subs.get(job_id)
                if not subs:
                    continue
                changed = raw != self.last.get(job_id)
                self.last[job_id] = raw
                rec = decode_record(raw) if changed else None
                for sub in subs:
                    if sub.since >= started or (sub.read and not changed):
                        continue
                    sub.record = rec if changed else decode_record(raw)
                    sub.read = True
                    sub.changed.set()
