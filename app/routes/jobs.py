"""Jobs: list, read, cancel, follow (Server-Sent Events) and download artifacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.deps import ServicesDep
from app.problems import Problem
from app.views import job_view
from core.store import TERMINAL
from specs import JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _not_found(job_id: str) -> Problem:
    return Problem(404, "job-not-found", f"no job {job_id!r} (unknown, or expired)")


@router.get("")
async def list_jobs(
    services: ServicesDep,
    status: Annotated[list[JobStatus] | None, Query(description="filter; repeatable")] = None,
    kind: Annotated[list[JobKind] | None, Query(description="filter; repeatable")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Jobs, newest first, with cursor pagination (``next_cursor`` is null on the last page)."""
    try:
        recs, nxt = await services.store.list_jobs(
            limit=limit, cursor=cursor, status=status, kind=kind
        )
    except ValueError as exc:
        raise Problem(
            422, "validation", str(exc), errors=[{"field": "cursor", "message": str(exc)}]
        ) from exc
    return {"items": [job_view(r, full=False) for r in recs], "next_cursor": nxt}


@router.get("/{job_id}")
async def get_job(job_id: str, services: ServicesDep) -> dict[str, Any]:
    """The job: status, progress, attempts, parameters, error, result with artifact URLs."""
    rec = await services.store.get(job_id)
    if rec is None:
        raise _not_found(job_id)
    return job_view(rec)


@router.post("/{job_id}/cancel", responses={409: {"description": "already finished"}})
async def cancel_job(job_id: str, services: ServicesDep) -> JSONResponse:
    """A queued job is canceled at once (200) and never starts; a running one is asked to stop
    (202) and becomes ``canceled`` within a few seconds. 409 if it already finished."""
    verdict, status = await services.store.cancel(job_id)
    if verdict == "missing":
        raise _not_found(job_id)
    if verdict == "finished":
        raise Problem(
            409, "job-finished", f"job {job_id} already finished ({status})", job_status=status
        )
    rec = await services.store.get(job_id)
    assert rec is not None
    return JSONResponse(job_view(rec), status_code=200 if verdict == "canceled" else 202)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/{job_id}/events", response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, services: ServicesDep) -> StreamingResponse:
    """Server-Sent Events: ``status`` on every status change, ``progress`` while it runs, then
    one final ``end`` event with the finished job, and the stream closes."""
    store = services.store
    if await store.get(job_id) is None:
        raise _not_found(job_id)

    async def stream() -> AsyncIterator[bytes]:
        last_status: str | None = None
        last_progress: Any = None
        idle = 0.0
        while True:
            rec = await store.get(job_id)
            if rec is None:
                yield _sse("error", {"detail": "job expired"})
                return
            if rec["status"] != last_status:
                last_status = rec["status"]
                yield _sse("status", {"id": job_id, "status": last_status,
                                      "attempts": rec["attempts"]})  # fmt: skip
            if rec["progress"] and rec["progress"] != last_progress:
                last_progress = rec["progress"]
                yield _sse("progress", dict(last_progress, id=job_id))
            if last_status in TERMINAL:
                yield _sse("end", job_view(rec))
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.2)
            idle += 0.2
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}},
)
async def get_artifact(
    job_id: str,
    name: str,
    services: ServicesDep,
    download: Annotated[Literal[0, 1], Query(description="1: as an attachment")] = 0,
) -> Response:
    """An artifact of a finished job with its media type (PNG images, JSON reports)."""
    rec = await services.store.get(job_id)
    if rec is None:
        raise _not_found(job_id)
    media = {a["name"]: a["media_type"] for a in rec.get("artifacts") or []}
    if name not in media:
        known = ", ".join(sorted(media)) or "none yet"
        raise Problem(404, "artifact-not-found", f"job {job_id} has no artifact {name!r} ({known})")
    data = await services.store.artifact(job_id, name)
    if data is None:
        raise Problem(404, "artifact-not-found", f"artifact {name!r} of job {job_id} expired")
    headers = {"Cache-Control": "public, max-age=86400, immutable"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return Response(data, media_type=media[name], headers=headers)
