"""Request dependencies: settings, the Redis store, the Celery client, the catalog, API keys."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import redis.asyncio as aredis
from celery import Celery
from fastapi import Depends, Request

from app.catalog import Catalog
from app.events import EventHub
from app.guard import ANONYMOUS, PRINCIPAL, Principal
from app.problems import Problem
from core.artifacts import ArtifactStore, store_from_settings
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
    events: EventHub
    template: MessageTemplate | None = None
    _artifacts: ArtifactStore | None = None
    _catalog: Catalog | None = None
    _catalog_at: float = 0.0
    _store_stamp: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts(self) -> ArtifactStore:
        """The artifact store of ``TIVIS_ARTIFACTS_URL`` (opened on first use)."""
        if self._artifacts is None:
            self._artifacts = store_from_settings(self.settings)
        return self._artifacts

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


def require_api_key(request: Request, services: ServicesDep) -> Principal:
    """Who is asking. :class:`app.guard.Guard` checked the key (``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>``, when ``TIVIS_API_KEYS`` is set) before the body was read."""
    principal = request.scope.get(PRINCIPAL)
    if isinstance(principal, Principal):
        return principal
    if services.settings.api_key_set:
        raise Problem(401, "unauthorized", "an API key is required")  # no Guard in front
    return ANONYMOUS


PrincipalDep = Annotated[Principal, Depends(require_api_key)]
