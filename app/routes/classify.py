"""``POST /classify``, ``POST /screen``: model debugging jobs (paper section 3.3) with uploads.

Every check happens before anything is stored or queued: the body is read within the upload
limits (:mod:`app.uploads`), the spec validated, each upload checked by content and the model
names against the published catalog (``specs.classify.check_request``), and every ``{"job",
"artifact"}`` reference resolved to a finished job's PNG artifact. Only then are the job record,
its uploaded bytes and its Celery message written, in one Redis transaction.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from app.catalog import UnknownName
from app.deps import PrincipalDep, ServicesDep
from app.guard import Principal
from app.kinds import KINDS, KindDef, unknown_names
from app.problems import Problem, validation_errors
from app.routes.submit import IdemKey, JobAccepted, check_cost, queue_job, require_catalog
from app.uploads import FILES_FIELD, SPEC_FIELD, BodyRejected, read_body
from core.artifacts import ArtifactNotFound, ArtifactStoreError
from specs.classify import (
    MAX_IMAGES,
    ArtifactRef,
    ClassifySpec,
    ScreenSpec,
    UploadRejected,
    check_request,
    image_header,
)

router = APIRouter(tags=["model debugging"])

_PROBLEM_KIND = {"models": "unknown-name", "rectangles": "rectangle-outside-image"}


def _reject(status: int, message: str, field: str | None, kind: str | None = None) -> Problem:
    where = field or "body"
    if kind is None:
        kind = "upload-too-large" if status == 413 else _PROBLEM_KIND.get(where, "upload-rejected")
    return Problem(status, kind, message, errors=[{"field": where, "message": message}])


def _parse_spec(kind: KindDef, text: str | None) -> ClassifySpec | ScreenSpec:
    model = ClassifySpec if kind.kind == "classify" else ScreenSpec
    try:
        return model.model_validate_json(text if text is not None else "{}")
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        for e in errors:
            if e["field"] == "body":
                e["field"] = SPEC_FIELD
        said = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem(
            422, "validation", f"invalid spec: {said}", errors=errors,
            title="Request validation failed",
        ) from exc  # fmt: skip


async def read_artifact(services: ServicesDep, ptr: dict[str, Any]) -> bytes | None:
    """The bytes a published pointer names; ``None`` if the store lost them (expired)."""
    try:
        return await anyio.to_thread.run_sync(services.artifacts.get, str(ptr["key"]))
    except ArtifactNotFound:
        return None
    except ArtifactStoreError as exc:
        raise Problem(503, "artifact-store-unavailable", str(exc)) from exc


async def _check_ref(
    services: ServicesDep,
    ref: ArtifactRef,
    field: str,
    spec: ClassifySpec | ScreenSpec,
    principal: Principal,
) -> None:
    """The referenced job (one the caller may see) finished and has ``ref.artifact`` as a PNG;
    for a screen, the rectangles lie inside it."""
    store = services.store
    rec = await store.get(ref.job)
    if rec is None or not principal.sees(rec):
        raise _reject(422, f"no job {ref.job!r} (unknown, or expired)", field, "unknown-artifact")
    if rec["status"] != "succeeded":
        raise _reject(
            422,
            f"job {ref.job} is {rec['status']}; only artifacts of succeeded jobs can be used",
            field,
            "unknown-artifact",
        )
    media = {a["name"]: a["media_type"] for a in rec.get("artifacts") or []}
    pngs = sorted(n for n, m in media.items() if m == "image/png")
    if media.get(ref.artifact) != "image/png":
        what = "is not an image" if ref.artifact in media else "does not exist"
        raise _reject(
            422,
            f"artifact {ref.artifact!r} of job {ref.job} {what}; its images: "
            f"{', '.join(pngs) or 'none'}",
            field,
            "unknown-artifact",
        )
    if isinstance(spec, ScreenSpec):
        ptr = await store.artifact(ref.job, ref.artifact)
        data = await read_artifact(services, ptr) if ptr else None
        if data is None:
            raise _reject(422, f"artifact {ref.artifact!r} of job {ref.job} expired", field)
        try:
            header = image_header(data)
        except ValueError:
            header = None
        if header is None:
            raise _reject(422, f"artifact {ref.artifact!r} is not a readable image", field)
        try:
            spec.check_rectangles(header.width, header.height)
        except ValueError as exc:
            raise _reject(422, str(exc), "rectangles") from exc
    elif not await store.has_artifact(ref.job, ref.artifact):
        raise _reject(422, f"artifact {ref.artifact!r} of job {ref.job} expired", field)


async def submit_with_images(
    request: Request,
    response: Response,
    services: ServicesDep,
    kind: KindDef,
    idem: str | None,
    principal: Principal,
) -> dict[str, Any]:
    cfg = services.settings
    try:
        body = await read_body(request, max_file_bytes=cfg.max_upload_bytes, max_files=MAX_IMAGES)
    except BodyRejected as exc:
        raise _reject(exc.status, exc.message, exc.field) from exc
    spec = _parse_spec(kind, body.spec)
    catalog = await require_catalog(services)
    for name in spec.models:  # unknown models with the closest names, as the other kinds
        try:
            catalog.model(name, "models")
        except UnknownName as exc:
            raise unknown_names([exc]) from exc
    uploads = body.uploads
    known = list(catalog.models)

    def check() -> None:  # decodes every upload: off the event loop
        check_request(spec, uploads, known_models=known, max_bytes=cfg.max_upload_bytes,
                      max_pixels=cfg.max_upload_pixels)  # fmt: skip

    try:
        await anyio.to_thread.run_sync(check)
    except UploadRejected as exc:
        raise _reject(exc.status, exc.message, exc.field) from exc
    # Name every image explicitly in the stored spec (the worker reads exactly these).
    if isinstance(spec, ClassifySpec):
        if not spec.images:
            spec = spec.model_copy(update={"images": list(uploads)})
        refs = list(spec.images)
        for i, ref in enumerate(refs):
            if isinstance(ref, ArtifactRef):
                await _check_ref(services, ref, f"images[{i}]", spec, principal)
    else:
        if spec.image is None:
            spec = spec.model_copy(update={"image": next(iter(uploads))})
        refs = [spec.image] if spec.image is not None else []
        if isinstance(spec.image, ArtifactRef):
            await _check_ref(services, spec.image, "image", spec, principal)
    unused = [n for n in uploads if n not in refs]
    if unused:
        raise _reject(
            422,
            f"upload {unused[0]!r} is not one of the spec's images; name every upload or none",
            f"{FILES_FIELD}[{unused[0]}]",
        )
    spec_json = spec.model_dump(mode="json")
    cost = check_cost(services, kind, spec, catalog)
    return await queue_job(
        services, kind, spec_json, response, idem, uploads=uploads, principal=principal, cost=cost
    )


def _request_body(spec: type[ClassifySpec | ScreenSpec], what: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{spec.__name__}"}
    return {
        "requestBody": {
            "required": True,
            "description": what,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            FILES_FIELD: {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "image files (PNG, JPEG or WebP, checked by "
                                "content); repeat the part for several images; each file's "
                                "name is how the spec refers to it",
                            },
                            SPEC_FIELD: {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "description": f"the {spec.__name__} as JSON text",
                            },
                        },
                    },
                    "encoding": {SPEC_FIELD: {"contentType": "application/json"}},
                },
                "application/json": {"schema": ref},
            },
        }
    }


def add_schemas(openapi: dict[str, Any]) -> None:
    """Put ``ClassifySpec`` and ``ScreenSpec`` (and what they use) into the OpenAPI components,
    where the multipart request bodies above refer to them."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in (ClassifySpec, ScreenSpec):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema


_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "an upload is over TIVIS_MAX_UPLOAD_BYTES or TIVIS_MAX_UPLOAD_PIXELS"},
    415: {"description": "neither multipart/form-data nor application/json"},
    422: {"description": "bad image (type, truncated, corrupt), spec, model, rectangle or "
          "artifact reference; problem+json with the field"},
}  # fmt: skip

_UPLOAD_DOC = (
    "multipart/form-data: file parts `images` (repeatable) and an optional JSON part `spec`; "
    "or application/json with the spec alone when every image is a `{job, artifact}` reference."
)


@router.post(
    "/classify",
    status_code=202,
    response_model=JobAccepted,
    summary=KINDS["classify"].summary,
    responses=_RESPONSES,
    openapi_extra=_request_body(ClassifySpec, _UPLOAD_DOC),
)
async def post_classify(
    request: Request,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """Top-k predictions of each image under each model, as JSON and a labelled panel PNG.

    Spec (`ClassifySpec`): `models` (or `model`; default the default model), `top_k` (5), `images`
    (upload names and `{"job": id, "artifact": name}` references, in panel order; empty: every
    upload in order). Result: `images[].predictions[model]`, `panel.png`, `classify.json`."""
    return await submit_with_images(request, response, services, KINDS["classify"], idem, principal)


@router.post(
    "/screen",
    status_code=202,
    response_model=JobAccepted,
    summary=KINDS["screen"].summary,
    responses=_RESPONSES,
    openapi_extra=_request_body(ScreenSpec, _UPLOAD_DOC),
)
async def post_screen(
    request: Request,
    response: Response,
    services: ServicesDep,
    principal: PrincipalDep,
    idem: IdemKey = None,
) -> dict[str, Any]:
    """Fill rectangles of one image with each model's zero; top-k before and after per model.

    Spec (`ScreenSpec`): `rectangles` (`[{x, y, width, height}]` in image pixels, required),
    `models`, `top_k`, `image` (the upload's name or a `{job, artifact}` reference; default the
    one upload). Result: `models[]` with `before`, `after`, `top1_changed`, `screened-<model>.png`,
    and `panel.png`."""
    return await submit_with_images(request, response, services, KINDS["screen"], idem, principal)
