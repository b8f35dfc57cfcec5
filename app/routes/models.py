"""What the workers can run: ``GET /models``, ``GET /models/<name>/classes?q=ball``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.catalog import UnknownName
from app.deps import ServicesDep
from app.problems import Problem

router = APIRouter(prefix="/models", tags=["models"])


@router.get("")
async def list_models(services: ServicesDep) -> dict[str, Any]:
    """Models whose weights are present on the workers (as the workers published them)."""
    catalog = await services.catalog()
    return {"items": [m.info for m in catalog.models.values()]}


async def _entry(services: ServicesDep, name: str) -> Any:
    catalog = await services.catalog()
    try:
        return catalog.model(name)
    except UnknownName as exc:
        raise Problem(
            404, "model-not-found", str(exc), errors=[{"field": "name", "message": str(exc)}],
            suggestions=exc.suggestions,
        ) from exc  # fmt: skip


@router.get("/{name}")
async def get_model(name: str, services: ServicesDep) -> dict[str, Any]:
    """One model's description (input size, normalization, zero, number of classes)."""
    entry = await _entry(services, name)
    return dict(entry.info)


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
