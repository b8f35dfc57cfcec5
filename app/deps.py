"""Request dependencies: settings, the Redis store, the Celery client, the catalog, API keys."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import redis.asyncio as aredis
from celery import Celery
from fastapi import Depends, Request

from app.catalog import Catalog
from app.problems import Problem
from core.modelstore import registered_catalog, store_stamp
from core.queue import MessageTemplate
from core.settings import Settings
from core.store import AsyncJobStore


@dataclass
class Services:
    """What the app holds for its lifetime (one per uvicorn worker process)."""

    settings: Settings
    redis: aredis.Redis
    store: AsyncJobStore
    celery: Celery
    template: MessageTemplate | None = None
    _catalog: Catalog | None = None
    _catalog_at: float = 0.0
    _store_stamp: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    async def catalog(self, *, fresh: bool = False) -> Catalog:
        """The published catalog, cached for ``catalog_cache_seconds``."""
        now = time.monotonic()
        ttl = self.settings.catalog_cache_seconds
        stamp = store_stamp(self.settings.model_store)  # a registration changed: read afresh
        if (
            fresh
            or self._catalog is None
            or now - self._catalog_at > ttl
            or (stamp != self._store_stamp)
        ):
            self._store_stamp = stamp
            raw = await self.store.catalog()
            store = self.settings.model_store
            registered = await anyio.to_thread.run_sync(registered_catalog, store)
            self._catalog = Catalog({**raw, **{k: v for k, v in registered.items()
                                               if k not in raw}})  # fmt: skip
            self._catalog_at = now
        return self._catalog


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(request: Request, services: ServicesDep) -> None:
    """When ``TIVIS_API_KEYS`` is set: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``."""
    keys = services.settings.api_key_set
    if not keys:
        return
    keys = keys | services.settings.admin_key_set  # admin keys are API keys too
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else None
    if given and any(hmac.compare_digest(given, k) for k in keys):
        return
    raise Problem(
        401,
        "unauthorized",
        "an API key is required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
        if not given
        else "the API key is not valid",
        headers={"WWW-Authenticate": 'Bearer realm="tivis"'},
    )
