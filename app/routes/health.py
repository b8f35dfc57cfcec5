"""``/healthz`` (alive), ``/readyz`` (Redis and a live worker), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from app.deps import ServicesDep, require_api_key
from core.queue import queue_key
from core.store import DURATION_BUCKETS

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
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}: {exc}"
        checks["workers"] = 0
    ready = checks["redis"] == "ok" and checks["workers"] > 0
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_api_key)])
async def metrics(services: ServicesDep) -> PlainTextResponse:
    """Prometheus text exposition: jobs by kind and status, queue depth, job durations."""
    m = await services.store.metrics()
    depth = await services.redis.llen(queue_key(services.settings))
    workers = await services.store.workers()
    lines: list[str] = []
    for metric, kind_, help_, counts in (
        ("tivis_jobs", "gauge", "Jobs now queued or running, by kind and status.", m["current"]),
        ("tivis_jobs_total", "counter", "Jobs that entered each status, by kind.", m["total"]),
    ):
        lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} {kind_}"]
        for key, n in sorted(counts.items()):
            kind, _, status = key.partition("|")
            labels = f'kind="{_label(kind)}",status="{_label(status)}"'
            lines.append(f"{metric}{{{labels}}} {max(n, 0)}")
    lines += [
        "# HELP tivis_queue_depth Messages waiting in the broker queue.",
        "# TYPE tivis_queue_depth gauge",
        f'tivis_queue_depth{{queue="{_label(services.settings.queue)}"}} {depth}',
        "# HELP tivis_workers Workers with a live heartbeat.",
        "# TYPE tivis_workers gauge",
        f"tivis_workers {len(workers)}",
        "# HELP tivis_job_duration_seconds Run time of finished jobs (start to end of attempt).",
        "# TYPE tivis_job_duration_seconds histogram",
    ]
    for kind, h in sorted(m["durations"].items()):
        acc = 0
        for le in DURATION_BUCKETS:
            acc += int(h.get(repr(le), 0))
            lines.append(f'tivis_job_duration_seconds_bucket{{kind="{kind}",le="{le}"}} {acc}')
        acc += int(h.get("+Inf", 0))
        lines.append(f'tivis_job_duration_seconds_bucket{{kind="{kind}",le="+Inf"}} {acc}')
        lines.append(f'tivis_job_duration_seconds_sum{{kind="{kind}"}} {float(h.get("sum", 0))}')
        lines.append(f'tivis_job_duration_seconds_count{{kind="{kind}"}} {int(h.get("count", 0))}')
    lines.append(f"# scraped at {time.time():.3f}")
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
