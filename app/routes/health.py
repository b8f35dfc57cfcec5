"""``/healthz`` (alive), ``/readyz`` (Redis and a live worker), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.deps import ServicesDep, require_api_key
from app.problems import new_error_id
from core.queue import queue_key
from core.store import DURATION_BUCKETS

log = logging.getLogger("tivis.api")
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when Redis answers and at least one worker sent a heartbeat recently; else 503."""
    checks: dict[str, Any] = {}
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
        workers = await services.store.workers()
        checks["workers"] = len(workers)
    except Exception:
        error_id = new_error_id()
        log.exception("readyz: Redis check failed", extra={"error_id": error_id})
        checks["redis"] = "unavailable"
        checks["workers"] = 0
        checks["error_id"] = error_id
    ready = checks["redis"] == "ok" and checks["workers"] > 0
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _gauge(name: str, help_: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = GaugeMetricFamily(name, help_, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class ServiceCollector(Collector):
    """The service's figures as Prometheus metric families, from what one scrape read: the
    job counters the store keeps in Redis (shared by every API process and worker), the broker's
    queue depth, live workers, and this process's open event streams."""

    def __init__(
        self, m: dict[str, Any], depth: int, queue: str, workers: int, streams: int
    ) -> None:
        self.m, self.depth, self.queue = m, depth, queue
        self.workers, self.streams = workers, streams

    def collect(self) -> Iterator[Metric]:
        labels = ["kind", "status"]
        current = GaugeMetricFamily(
            "tivis_jobs_current", "Jobs now queued or running, by kind and status.", labels=labels
        )
        total = CounterMetricFamily(
            "tivis_jobs", "Jobs that entered each status, by kind.", labels=labels
        )
        for family, counts in ((current, self.m["current"]), (total, self.m["total"])):
            for key, n in sorted(counts.items()):
                kind, _, status = key.partition("|")
                family.add_metric([kind, status], max(n, 0))
        yield current
        yield total
        yield _gauge("tivis_queue_depth", "Messages waiting in the broker queue.", self.depth,
                     {"queue": self.queue})  # fmt: skip
        yield _gauge("tivis_workers", "Workers with a live heartbeat.", self.workers)
        yield _gauge("tivis_event_streams", "Event streams open on this API process.",
                     self.streams)  # fmt: skip
        durations = HistogramMetricFamily(
            "tivis_job_duration_seconds",
            "Run time of finished jobs (start to end of attempt).",
            labels=["kind"],
        )
        for kind, h in sorted(self.m["durations"].items()):
            acc = 0
            buckets: list[tuple[str, float]] = []
            for le in DURATION_BUCKETS:
                acc += int(h.get(repr(le), 0))
                buckets.append((repr(le), acc))
            buckets.append(("+Inf", acc + int(h.get("+Inf", 0))))
            durations.add_metric([kind], buckets, sum_value=float(h.get("sum", 0)))
        yield durations


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_api_key)])
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition (``prometheus_client``): jobs by kind and status, queue depth,
    live workers, open event streams, job durations."""
    m = await services.store.metrics()
    depth = int(await services.redis.llen(queue_key(services.settings)))
    workers = len(await services.store.workers())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        ServiceCollector(m, depth, services.settings.queue, workers, services.events.open)
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
