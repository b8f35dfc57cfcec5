"""``POST /atlas`` (an atlas job: many classes of one model, in chunks over all workers) and
``GET /atlas/<id>`` (its classes so far: a partial atlas can be browsed while the rest runs)."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Response

from app.catalog import UnknownName
from app.deps import PrincipalDep, ServicesDep
from app.kinds import KINDS, MAX_SUGGESTED, unknown_names
from app.problems import Problem
from app.routes.jobs import JobId
from app.routes.submit import IdemKey, JobAccepted, check_cost, queue_job, require_catalog
from app.views import iso, job_urls
from core.chunks import atlas_snapshot
from specs.atlas import AtlasSpec, chunk_count, resolve_classes

router = APIRouter(tags=["atlas"])

MAX_ERRORS = 20
"""Entries naming no class that a 422 lists; the rest are counted in its detail."""


@router.post("/atlas", status_code=202, response_model=JobAccepted, summary=KINDS["atlas"].summary)
async def post_atlas(
    spec: AtlasSpec,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """A model, a method (default ``invariant+``) and its classes: all of them (default), or a
    list of indices, names and ranges (``[0, "5-9", "goldfish"]`` or ``"0-99"``). The job is
    split into chunks of ``chunk_size`` classes that every worker takes from the queue; each
    chunk's images can be read as soon as it finished (``GET /atlas/<id>``)."""
    catalog = await require_catalog(services)
    try:
        entry = catalog.model(spec.model, "model")
    except UnknownName as exc:
        raise unknown_names([exc]) from exc

    suggested: dict[int, list[str]] = {}  # position -> close names, for the first few unknowns

    def resolve(item: int | str, pos: int) -> int:
        try:
            return entry.resolve(item, f"classes[{pos}]", suggest=len(suggested) < MAX_SUGGESTED)
        except UnknownName as exc:
            suggested[pos] = exc.suggestions
            raise

    # up to 10,000 entries against up to 100,000 labels: in a thread, not on the event loop
    classes, bad = await anyio.to_thread.run_sync(resolve_classes, spec, entry.labels, resolve)
    if bad:
        shown = [UnknownName(f"classes[{p}]", m, suggested.get(p, [])) for p, m in bad[:MAX_ERRORS]]
        raise unknown_names(shown, more=len(bad) - len(shown))
    resolved = spec.model_copy(update={"classes": classes})  # the cost of what will run
    cost = check_cost(services, KINDS["atlas"], resolved, catalog)
    extra = {
        "atlas_classes": json.dumps(classes, separators=(",", ":")),
        "classes_total": str(len(classes)),
        "chunks_total": str(chunk_count(len(classes), spec.chunk_size)),
    }
    body = spec.model_dump(mode="json")
    return await queue_job(
        services, KINDS["atlas"], body, response, idem, principal=principal, cost=cost, extra=extra
    )


@router.get("/atlas/{job_id}")
async def get_atlas(
    job_id: JobId, services: ServicesDep, principal: PrincipalDep
) -> dict[str, Any]:
    """The atlas so far: every published class (in class order, with its image, inversion and
    report URLs and its quality), the classes still pending, status and progress."""
    # the record and the entries as of one moment (read apart, a chunk published between the
    # two reads gave entries that the progress did not count yet)
    entries, rec = await atlas_snapshot(services.redis, services.settings.key_prefix, job_id)
    if rec is None or not principal.sees(rec) or rec.get("kind") != "atlas":
        # 404 alike for unknown, expired, another key's jobs and other kinds
        raise Problem(404, "job-not-found", f"no atlas {job_id!r} (unknown, or expired)")
    base = f"/jobs/{job_id}/artifacts"
    for e in entries:
        e["urls"] = {role: f"{base}/{name}" for role, name in e["artifacts"].items()}
    classes = [int(c) for c in json.loads(rec.get("atlas_classes") or "[]")]
    done = {int(e["index"]) for e in entries}
    labels: tuple[str, ...] = ()
    spec = rec.get("spec") or {}
    catalog = await services.catalog()
    if catalog:
        try:
            labels = catalog.model(str(spec.get("model")), "model").labels
        except UnknownName:
            labels = ()
    pending = [
        {"index": c, "label": labels[c] if c < len(labels) else str(c)}
        for c in classes
        if c not in done
    ]
    finished = rec["status"] == "succeeded"
    return {
        "id": job_id,
        "status": rec["status"],
        "progress": rec.get("progress"),
        "error": rec.get("error"),
        "created_at": iso(rec.get("created_at")),
        "finished_at": iso(rec.get("finished_at")),
        "model": spec.get("model"),
        "method": spec.get("method"),
        "classes": len(classes),
        "done": len(entries),
        "entries": entries,
        "pending": pending,
        "index_url": f"{base}/index.json" if finished else None,
        "contact_sheet_url": f"{base}/contact-sheet.png" if finished else None,
        "urls": job_urls(job_id),
    }
