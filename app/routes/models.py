"""Models: what the workers can run (``GET /models``, ``GET /models/<name>``, classes), and
registered models (``POST /models``, ``DELETE /models/<name>``).

A registration is checked here as far as it can be without torch (size while streaming, the
metadata, the name, the file's container and, for state dicts, its pickle's globals), written to
the model store in one rename (``core.modelstore``) and validated by a worker (job kind
``validate_model``). Only a validated version is listed. ``GET /models/<name>`` shows a
registered model's status: ``pending`` (validation queued or running), ``ready`` or ``failed``
(with the error; the file is gone).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from app.catalog import UnknownName
from app.deps import PrincipalDep, Services, ServicesDep
from app.guard import given_key
from app.kinds import KINDS
from app.modelupload import FILE_FIELD, METADATA_FIELD, read_model_body
from app.problems import Problem, validation_errors
from app.routes.submit import queue_job
from app.uploads import BodyRejected
from core import modelstore
from specs.models import EXTENSIONS, FILE_NAMES, NAME_RE, ModelMetadata, split_ref

router = APIRouter(prefix="/models", tags=["models"])


def require_admin(request: Request, services: ServicesDep, principal: PrincipalDep) -> None:
    """With API keys or admin keys configured, only an admin key (``TIVIS_ADMIN_KEYS``) may
    register or delete models (:class:`app.guard.Guard` compared the key as bytes)."""
    cfg = services.settings
    admins = cfg.admin_key_set
    if not admins and not cfg.api_key_set:
        return
    if principal.admin:
        return
    given = given_key(request.scope["headers"])
    raise Problem(
        403 if given else 401,
        "admin-key-required",
        "registering or deleting models needs an admin key (TIVIS_ADMIN_KEYS)"
        + ("" if admins else "; none is configured"),
        errors=[{"field": "X-API-Key", "message": "not an admin key"}],
        headers=None if given else {"WWW-Authenticate": 'Bearer realm="tivis"'},
    )


AdminDep = Annotated[None, Depends(require_admin)]


@router.get("")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    """Models the workers can run: built-in ones whose weights are present, and every validated
    registered model (by name, its newest version, and as ``name@v``)."""
    catalog = await services.catalog()
    return {"items": [m.info for m in catalog.models.values()]}


def _store(services: Services) -> Path:
    return services.settings.model_store


async def _registered(services: Services, name: str) -> dict[str, Any] | None:
    """The registration view of ``name`` or ``name@v``: the entry and its status (``None``
    when nothing was registered under it)."""
    base, wanted = split_ref(name)
    store = _store(services)
    on_disk = await anyio.to_thread.run_sync(modelstore.versions, store, base)
    records = {
        ref: r for ref, r in (await services.store.registrations()).items()
        if split_ref(ref)[0] == base
    }  # fmt: skip
    disk = {v.ref: v for v in on_disk}
    views: list[dict[str, Any]] = []
    for ref in sorted(set(disk) | set(records), key=lambda r: split_ref(r)[1] or 0):
        rec = records.get(ref) or {}
        version = disk.get(ref)
        view: dict[str, Any] = {"version": ref, "status": "pending", "error": None}
        meta = await anyio.to_thread.run_sync(version.meta_or_none) if version else None
        if version is None or meta is None:  # not on disk, or removed since the listing
            version = None
        else:
            rec = {**meta, **rec}
            ready = await anyio.to_thread.run_sync(version.ready_info)
            if ready is not None:
                view["status"] = "ready"
                keys = ("step_seconds", "outputs", "device", "validated_at")
                view["validation"] = {k: ready.get(k) for k in keys}
                view["info"] = ready.get("info")
        job = await services.store.get(str(rec["job"])) if rec.get("job") else None
        if view["status"] != "ready":
            status = job["status"] if job else None
            if status in ("failed", "canceled") or (status == "succeeded" and version is None):
                view["status"] = "failed"
                view["error"] = (job or {}).get("error") or {"message": "validation did not end"}
            elif version is None and status not in ("queued", "running"):
                continue  # deleted, or its record expired
        for key in ("sha256", "format", "size", "created_at", "job", "metadata"):
            if key in rec:
                view[key] = rec[key]
        views.append(view)
    if not views:
        return None
    if wanted is not None:
        chosen = [v for v in views if v["version"] == name]
        if not chosen:
            return None
        current = chosen[0]
    else:
        usable = [v for v in views if v["status"] == "ready"]
        current = usable[-1] if usable else views[-1]
    out: dict[str, Any] = {
        **(current.get("info") or {}),
        "name": name,
        **{k: v for k, v in current.items() if k != "info"},
    }
    out["registered"] = True
    out["versions"] = [
        {k: v[k] for k in ("version", "status", "error", "sha256", "created_at") if k in v}
        for v in views
    ]
    return out


@router.get("/{name}")
async def get_model(name: str, services: ServicesDep) -> dict[str, Any]:
    """One model: input size, normalization, zero, number of classes; for a registered model
    also its version, ``status`` (``pending``, ``ready``, ``failed`` with ``error``), checksum,
    validation timing and all its versions."""
    reg = await _registered(services, name)
    if reg is not None:
        return reg
    entry = await _entry(services, name)
    return {**dict(entry.info), "status": "ready", "registered": False}


async def _entry(services: ServicesDep, name: str) -> Any:
    catalog = await services.catalog()
    try:
        return catalog.model(name)
    except UnknownName as exc:
        raise Problem(
            404, "model-not-found", str(exc), errors=[{"field": "name", "message": str(exc)}],
            suggestions=exc.suggestions,
        ) from exc  # fmt: skip


@router.get("/{name}/classes")
async def model_classes(
    name: str,
    services: ServicesDep,
    q: Annotated[
        str | None, Query(max_length=100, description="substring, case-insensitive")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 50,
) -> dict[str, Any]:
    """Class labels of a model with their indexes; ``q`` filters (prefix matches first)."""
    entry = await _entry(services, name)
    items = entry.search(q, limit)
    return {"model": name, "total": len(entry.labels), "items": items}


def _reject(status: int, kind: str, message: str, field: str) -> Problem:
    return Problem(status, kind, message, errors=[{"field": field, "message": message}])


def _metadata(text: str) -> ModelMetadata:
    try:
        return ModelMetadata.model_validate_json(text)
    except ValidationError as exc:
        errors = validation_errors(exc.errors())
        for e in errors:
            e["field"] = METADATA_FIELD if e["field"] == "body" else f"metadata.{e['field']}"
        said = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise Problem(
            422, "validation", f"invalid metadata: {said}", errors=errors,
            title="Request validation failed",
        ) from exc  # fmt: skip


@router.post("", status_code=202, summary="Register a model (validated by a worker)")
async def register_model(
    request: Request, response: Response, services: ServicesDep, _admin: AdminDep
) -> dict[str, Any]:
    """``multipart/form-data``: a file part ``file`` (``.pt2``, ``.pt``, ``.pth`` or
    ``.safetensors``) and a JSON part ``metadata`` (name, input_size, mean/zero, std,
    resize_to, interpolation, labels, architecture for state dicts). 202 with the version
    (``name@v``) and its validation job; poll ``GET /models/<name@v>`` until ``ready`` or
    ``failed``. Re-registering a name makes the next version."""
    cfg = services.settings
    store = _store(services)
    staged = await anyio.to_thread.run_sync(modelstore.incoming_dir, store)
    try:
        try:
            body = await read_model_body(request, staged, cfg.max_model_bytes)
        except BodyRejected as exc:
            kind = "upload-too-large" if exc.status == 413 else "upload-rejected"
            raise _reject(exc.status, kind, exc.message, exc.field or "body") from exc
        meta = _metadata(str(body.metadata))
        return await _register(services, response, staged, body, meta)
    finally:
        await anyio.to_thread.run_sync(modelstore.remove, staged)  # gone once published


async def _register(
    services: Services, response: Response, staged: Path, body: Any, meta: ModelMetadata
) -> dict[str, Any]:
    store = _store(services)
    ext = next((e for e in sorted(EXTENSIONS, key=len, reverse=True)
                if str(body.filename).lower().endswith(e)), None)  # fmt: skip
    if ext is None:
        raise _reject(
            422, "unsupported-format",
            f"cannot tell the format of {body.filename!r}: name the file .pt2 (torch.export), "
            ".pt (TorchScript), .pth or .safetensors (a torchvision state dict)", FILE_FIELD,
        )  # fmt: skip
    fmt = EXTENSIONS[ext]
    if body.size == 0:
        raise _reject(422, "upload-rejected", "the model file is empty", FILE_FIELD)
    if fmt in ("state_dict", "safetensors") and not meta.architecture:
        raise _reject(
            422, "validation",
            "a state dict needs metadata 'architecture': a torchvision.models classification "
            "architecture such as resnet18", "metadata.architecture",
        )  # fmt: skip
    if not NAME_RE.match(meta.name):  # the schema checks it too; kept for clarity
        raise _reject(422, "validation", f"malformed name {meta.name!r}", "metadata.name")
    catalog = await services.catalog(fresh=True)
    taken = catalog.models.get(meta.name)
    if taken is not None and not taken.info.get("version"):
        raise _reject(
            409, "name-taken",
            f"the name {meta.name!r} is taken by a built-in model; choose another name",
            "metadata.name",
        )  # fmt: skip
    try:
        await anyio.to_thread.run_sync(modelstore.check_file, body.path, fmt, body.size)
    except modelstore.FileRejected as exc:
        raise _reject(422, "model-file-rejected", str(exc), FILE_FIELD) from exc
    # the version folder: the file, meta.json; renamed into place in one step
    final = staged / "final"
    final.mkdir()
    (final / FILE_NAMES[fmt]).parent.mkdir(exist_ok=True)
    Path(str(body.path)).rename(final / FILE_NAMES[fmt])
    job_id = uuid.uuid4().hex
    while True:
        number = await services.store.next_model_version(meta.name)
        ref = f"{meta.name}@{number}"
        if not (store / ref).exists():
            break
    entry = {
        "name": meta.name,
        "version": number,
        "ref": ref,
        "format": fmt,
        "file": FILE_NAMES[fmt],
        "uploaded_as": body.filename,
        "sha256": body.sha256,
        "size": body.size,
        "created_at": time.time(),
        "job": job_id,
        "metadata": meta.model_dump(mode="json"),
    }
    await anyio.to_thread.run_sync(modelstore.write_json_atomic, final / modelstore.META, entry)
    try:
        await anyio.to_thread.run_sync(modelstore.publish, final, store, ref)
    except OSError as exc:
        raise Problem(409, "version-conflict", f"{ref} appeared meanwhile; retry") from exc
    record = {k: entry[k] for k in ("name", "version", "ref", "format", "sha256", "size",
                                     "created_at", "job")}  # fmt: skip
    spec = {"ref": ref, "format": fmt, "sha256": body.sha256, "size": body.size}
    try:
        await services.store.save_registration(ref, record)
        accepted = await queue_job(services, KINDS["validate_model"], spec, response, None,
                                   job_id=job_id)  # fmt: skip
    except BaseException:
        await anyio.to_thread.run_sync(modelstore.remove, store / ref)
        await services.store.drop_registrations([ref])
        raise
    response.headers["Location"] = f"/models/{ref}"
    return {
        "name": meta.name,
        "version": ref,
        "status": "pending",
        "sha256": body.sha256,
        "size": body.size,
        "format": fmt,
        "job": accepted,
        "urls": {"self": f"/models/{ref}", "job": accepted["urls"]["self"]},
    }


@router.delete("/{name}")
async def delete_model(name: str, services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    """Remove a registered model: ``name`` (every version) or ``name@v`` (one). Its files are
    removed and it is no longer listed; a pending validation is canceled."""
    base, wanted = split_ref(name)
    store = _store(services)
    records = await services.store.registrations()
    disk = await anyio.to_thread.run_sync(modelstore.versions, store, base)
    refs = {v.ref for v in disk} | {r for r in records if split_ref(r)[0] == base}
    if wanted is not None:
        refs &= {name}
    if not refs:
        catalog = await services.catalog()
        if name in catalog.models:
            raise _reject(409, "built-in-model", f"{name!r} is built in; it cannot be deleted",
                          "name")  # fmt: skip
        raise _reject(404, "model-not-found", f"no registered model {name!r}", "name")
    for v in disk:
        if v.ref in refs:
            await anyio.to_thread.run_sync(modelstore.remove, v.path)
    for ref in refs:
        job = (records.get(ref) or {}).get("job")
        if job:
            await services.store.cancel(str(job))
    await services.store.drop_registrations(refs)
    await services.catalog(fresh=True)
    return {"deleted": sorted(refs, key=lambda r: split_ref(r)[1] or 0)}
