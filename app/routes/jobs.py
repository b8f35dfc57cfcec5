"""Jobs: list, read, cancel, follow (Server-Sent Events) and download artifacts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.deps import PrincipalDep, ServicesDep
from app.downloads import artifact_response
from app.events import HubFull, Subscription
from app.guard import Principal
from app.problems import Problem
from app.views import job_view
from app.webhooks import emit_canceled, webhook_view
from core.store import TERMINAL
from specs import JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_ID = r"^[A-Za-z0-9_.-]{1,64}$"
JobId = Annotated[str, Path(pattern=JOB_ID, description="the job's id")]
KEEP_ALIVE_SECONDS = 15.0


def _not_found(job_id: str) -> Problem:
    return Problem(404, "job-not-found", f"no job {job_id!r} (unknown, or expired)")


async def _job(services: ServicesDep, principal: Principal, job_id: str) -> dict[str, Any]:
    """The record of a job this caller may see; 404 alike for unknown and another key's jobs."""
    rec = await services.store.get(job_id)
    if rec is None or not principal.sees(rec):
        raise _not_found(job_id)
    return rec


@router.get("")
async def list_jobs(
    services: ServicesDep,
    principal: PrincipalDep,
    status: Annotated[list[JobStatus] | None, Query(description="filter; repeatable")] = None,
    kind: Annotated[list[JobKind] | None, Query(description="filter; repeatable")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """Jobs, newest first, with cursor pagination: ``next_cursor`` is null on the last page; a
    page that stopped at the store's scan budget may be short, even empty, with a cursor."""
    try:
        recs, nxt = await services.store.list_jobs(
            limit=limit, cursor=cursor, status=status, kind=kind, owner=principal.scope
        )
    except ValueError as exc:
        raise Problem(
            422, "validation", str(exc), errors=[{"field": "cursor", "message": str(exc)}]
        ) from exc
    return {"items": [job_view(r, full=False) for r in recs], "next_cursor": nxt}


@router.get("/{job_id}")
async def get_job(job_id: JobId, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """The job: status, progress, attempts, parameters, error, result with artifact URLs."""
    rec = await _job(services, principal, job_id)
    view = job_view(rec)
    hook = await webhook_view(services, rec)
    if hook is not None:
        view["webhook"] = hook
    return view


@router.post("/{job_id}/cancel", responses={409: {"description": "already finished"}})
async def cancel_job(job_id: JobId, services: ServicesDep, principal: PrincipalDep) -> JSONResponse:
    """A queued job is canceled at once (200) and never starts; a running one is asked to stop
    (202) and becomes ``canceled`` within a few seconds. 409 if it already finished."""
    await _job(services, principal, job_id)
    verdict, status = await services.store.cancel(job_id)
    if verdict == "missing":
        raise _not_found(job_id)
    if verdict == "finished":
        raise Problem(
            409, "job-finished", f"job {job_id} already finished ({status})", job_status=status
        )
    rec = await services.store.get(job_id)
    assert rec is not None
    if verdict == "canceled":
        await emit_canceled(services, rec)
    return JSONResponse(job_view(rec), status_code=200 if verdict == "canceled" else 202)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream(StreamingResponse):
    """A streaming response that gives its place in the event hub back however it ends."""

    def __init__(self, content: AsyncIterator[bytes], sub: Subscription) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.sub.close()


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={503: {"description": "this process serves TIVIS_MAX_EVENT_STREAMS streams"}},
)
async def job_events(job_id: JobId, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Server-Sent Events: ``status`` on every status change, ``progress`` while it runs, then
    one final ``end`` event with the finished job, and the stream closes. Each API process serves
    at most ``TIVIS_MAX_EVENT_STREAMS`` streams (503 with ``Retry-After`` past that; poll
    ``GET /jobs/<id>`` instead); the streams share one Redis connection per process."""
    rec = await _job(services, principal, job_id)
    try:
        sub = services.events.subscribe(job_id)
    except HubFull:
        raise Problem(
            503, "too-many-streams",
            f"this API process already serves {services.events.limit} event streams; retry "
            f"later, or poll GET /jobs/{job_id}", headers={"Retry-After": "5"},
        ) from None  # fmt: skip
    sub.record = rec
    sub.changed.set()

    async def stream() -> AsyncIterator[bytes]:
        last_status: str | None = None
        last_progress: Any = None
        while True:
            if not await sub.next(KEEP_ALIVE_SECONDS):
                yield b": keep-alive\n\n"
                continue
            rec = sub.record
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

    return EventStream(stream(), sub)


@router.head("/{job_id}/artifacts/{name}", response_class=Response, include_in_schema=False)
@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}}},
)
async def get_artifact(
    job_id: JobId,
    name: str,
    request: Request,
    services: ServicesDep,
    principal: PrincipalDep,
    download: Annotated[bool, Query(description="1 or true: as an attachment")] = False,
) -> Response:
    """An artifact with its media type (PNG images, JSON reports), streamed from the artifact
    store with ``ETag``, ``Content-Length`` and ``Range`` support (206). An atlas's class images
    can be read as soon as their chunk finished. ``HEAD`` gives the same headers, no body."""
    rec = await _job(services, principal, job_id)
    ptr = await services.store.artifact(job_id, name)
    if ptr is None:
        known = ", ".join(sorted(a["name"] for a in rec.get("artifacts") or [])) or "none yet"
        raise Problem(404, "artifact-not-found", f"job {job_id} has no artifact {name!r} ({known})")
    cache, vary = "public, max-age=86400, immutable", None
    cfg = services.settings
    if cfg.api_key_set or cfg.admin_key_set:  # per key: no shared cache may keep it
        cache, vary = "private, max-age=86400, immutable", "X-API-Key, Authorization"
    return await artifact_response(
        request, services.artifacts, ptr, name, download=download, cache_control=cache, vary=vary
    )
