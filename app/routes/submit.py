"""``POST /visualize``, ``POST /entropy-sweep``: validate, check names, store, queue (202)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from app.catalog import Catalog
from app.deps import PrincipalDep, Services, ServicesDep
from app.guard import ANONYMOUS, Principal
from app.kinds import KINDS, KindDef, check_names, unknown_names
from app.problems import Problem
from app.views import job_urls
from app.webhooks import check_webhook
from core.queue import RUN_JOB_TASK, queue_key
from core.store import IdempotencyConflict, body_hash
from specs import SweepSpec, VisualizeSpec
from specs.cost import biggest_factors, check_entropy, check_step, estimate
from specs.models import CompareSpec

log = logging.getLogger("tivis.api")
router = APIRouter(tags=["jobs"])


class JobAccepted(BaseModel):
    id: str
    kind: str
    status: str
    urls: dict[str, str]
    cost: dict[str, int] | None = None


async def require_catalog(services: Services) -> Catalog:
    """The published catalog, or 503 when no worker has published one yet."""
    catalog = await services.catalog()
    if not catalog:
        catalog = await services.catalog(fresh=True)
    if not catalog:
        raise Problem(
            503, "no-models", "no worker has published its models yet; start a worker",
            headers={"Retry-After": "5"},
        )  # fmt: skip
    return catalog


def check_cost(
    services: Services, kind: KindDef, spec: BaseModel, catalog: Catalog
) -> dict[str, int]:
    """The job's estimated cost (``specs.cost``), or a 422 when one step is too large, a sweep's
    entropy windows do not fit its images, or the whole job costs more than
    ``TIVIS_MAX_JOB_COST``, naming the fields to reduce."""
    sizes = catalog.input_sizes()
    for field, why in (("augment.views", check_step(spec, sizes)),
                       ("entropy", check_entropy(spec, sizes))):  # fmt: skip
        if why is not None:
            raise Problem(
                422, "validation", f"invalid request: {field}: {why}",
                title="Request validation failed", errors=[{"field": field, "message": why}],
            )  # fmt: skip
    cost = estimate(kind.kind, spec, sizes)
    limit = services.settings.max_job_cost
    if cost.pixel_passes <= limit:
        return cost.as_dict()
    factors = biggest_factors(kind.kind, spec, sizes)
    what = ", ".join(str(f) for f in factors) or "the job's size"
    detail = (
        f"estimated cost {cost.pixel_passes:.3g} pixel-passes is over the limit of {limit:.3g} "
        f"(TIVIS_MAX_JOB_COST; {cost.pixel_passes / limit:.3g} times too much); reduce {what}"
    )
    raise Problem(
        422, "too-costly", detail, title="Job too costly",
        errors=[{"field": f.field, "message": f"reducing it divides the cost by {f.factor:.3g}"}
                for f in factors],
        cost=cost.as_dict(), limit=limit, reduce=[f.as_dict() for f in factors],
    )  # fmt: skip


async def submit(
    services: Services,
    kind: KindDef,
    spec: BaseModel,
    response: Response,
    idempotency_key: str | None,
    principal: Principal = ANONYMOUS,
) -> dict[str, Any]:
    """Check names against the published catalog, store the job, send its task (by name)."""
    catalog = await require_catalog(services)
    unknown = check_names(spec, catalog)
    if unknown:
        raise unknown_names(unknown)
    cost = check_cost(services, kind, spec, catalog)
    body = spec.model_dump(mode="json")
    return await queue_job(
        services, kind, body, response, idempotency_key, principal=principal, cost=cost
    )


async def queue_job(
    services: Services,
    kind: KindDef,
    body: dict[str, Any],
    response: Response,
    idempotency_key: str | None,
    uploads: Mapping[str, bytes] | None = None,
    job_id: str | None = None,
    *,
    principal: Principal = ANONYMOUS,
    cost: dict[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Store a checked job (with its ``uploads`` and ``extra`` record fields, in the same
    transaction) and queue it: 202.

    The record keeps the hash of the caller's API key (``owner``), an ``Idempotency-Key`` is
    scoped to that key, and a key with ``TIVIS_MAX_QUEUED_PER_KEY`` queued jobs gets 429.
    ``cost`` (the job's estimate) is stored in the record and echoed."""
    await check_webhook(services, body)
    job_id = job_id or uuid.uuid4().hex
    idem = None
    if idempotency_key:
        digests = {n: hashlib.sha256(d).hexdigest() for n, d in (uploads or {}).items()}
        hashed: list[Any] = [kind.kind, body, digests] if uploads else [kind.kind, body]
        scoped = f"{principal.owner}:{idempotency_key}" if principal.owner else idempotency_key
        idem = (scoped, body_hash(hashed))
    limit = services.settings.max_queued_per_key
    if limit and not await services.store.admit(principal.quota, job_id, limit):
        raise Problem(
            429, "too-many-queued-jobs",
            f"this API key already has {limit} queued jobs (TIVIS_MAX_QUEUED_PER_KEY); wait for "
            "some to start, or cancel some", headers={"Retry-After": "30"},
        )  # fmt: skip
    fields = dict(extra or {})
    if principal.owner:
        fields["owner"] = principal.owner
    if cost is not None:
        fields["cost"] = json.dumps(cost)
    enqueue = None
    if services.template is not None:  # record and broker message in one transaction
        enqueue = (queue_key(services.settings), services.template.render(job_id))
    try:
        job_id, created = await services.store.create(
            job_id, kind.kind, body, idempotency=idem, enqueue=enqueue, uploads=uploads,
            extra=fields or None,
        )  # fmt: skip
    except IdempotencyConflict as exc:
        raise Problem(
            422, "idempotency-key-reused", str(exc), title="Idempotency-Key reused", job=exc.job_id
        ) from exc
    urls = job_urls(job_id)
    response.headers["Location"] = urls["self"]
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
        rec = await services.store.get(job_id)
        status = rec["status"] if rec else "queued"
        cost = rec.get("cost") if rec else None
        return {"id": job_id, "kind": kind.kind, "status": status, "urls": urls, "cost": cost}
    if enqueue is not None:
        log.info("job queued", extra={"job_id": job_id, "kind": kind.kind})
        return {"id": job_id, "kind": kind.kind, "status": "queued", "urls": urls, "cost": cost}

    def send() -> None:
        services.celery.send_task(
            RUN_JOB_TASK, args=[job_id], task_id=job_id, queue=services.settings.queue
        )

    try:
        await anyio.to_thread.run_sync(send)
    except Exception as exc:
        await services.store.fail(job_id, {"type": "QueueUnavailable", "message": str(exc)})
        log.error("queue unavailable", extra={"job_id": job_id, "error": str(exc)})
        raise Problem(503, "queue-unavailable", f"could not queue the job: {exc}") from exc
    log.info("job queued", extra={"job_id": job_id, "kind": kind.kind})
    return {"id": job_id, "kind": kind.kind, "status": "queued", "urls": urls, "cost": cost}


IdemKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="the same key (with the same body) returns the same job",
    ),
]


@router.post(
    "/visualize", status_code=202, response_model=JobAccepted, summary=KINDS["visualize"].summary
)
async def post_visualize(
    spec: VisualizeSpec,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """Visualize one or more targets on one or more models. 202 with the job and its URLs."""
    return await submit(services, KINDS["visualize"], spec, response, idem, principal)


@router.post(
    "/entropy-sweep", status_code=202, response_model=JobAccepted, summary=KINDS["sweep"].summary
)
async def post_sweep(
    spec: SweepSpec,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """Visualize one target from many initial gray levels and measure the entropy of each."""
    return await submit(services, KINDS["sweep"], spec, response, idem, principal)


@router.post(
    "/compare", status_code=202, response_model=JobAccepted, summary=KINDS["compare"].summary
)
async def post_compare(
    spec: CompareSpec,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """Visualize every target with every model (grid.png: rows models, columns targets, with
    each model's zero color) and classify every visualization with every model (matrix.png and
    compare.json: the target's probability and rank)."""
    return await submit(services, KINDS["compare"], spec, response, idem, principal)
