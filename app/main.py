"""The FastAPI app: ``uvicorn app.main:app``. Imports no torch and no worker module."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import redis
import redis.asyncio as aredis
from celery import Celery
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from kombu.transport.redis import Channel

from app import problems
from app.deps import Services, require_api_key
from app.events import EventHub
from app.guard import Guard
from app.routes import atlas, classify, health, jobs, models, submit
from core.logs import configure_logging
from core.queue import (
    MessageTemplate,
    broker_prefix,
    celery_config,
    queue_key,
    scratch_queue,
    send_template,
)
from core.reaper import Reaper, reap_every
from core.settings import Settings, get_settings
from core.store import AsyncJobStore, JobStore

STATIC = Path(__file__).parent / "static"


async def capture_template(client: aredis.Redis, celery: Celery, cfg: Settings) -> MessageTemplate:
    """Have Celery write one ``tivis.run_job`` message to a scratch queue; take it back."""
    scratch = scratch_queue(cfg)
    await anyio.to_thread.run_sync(send_template, celery, scratch)
    prefix = broker_prefix(cfg)
    raw = cast(bytes | None, await client.rpop(prefix + scratch))
    # the scratch queue, and the binding tables kombu made for it (else one unexpiring key
    # per start); the names come from kombu itself, its exchange is named like the queue
    tables = ("keyprefix_queue", "keyprefix_binding_permanent")
    bindings = [prefix + getattr(Channel, t) % scratch for t in tables if hasattr(Channel, t)]
    await client.delete(prefix + scratch, *bindings)
    if raw is None:
        raise RuntimeError("could not capture the Celery message template")
    return MessageTemplate(raw, scratch, cfg.queue)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; ``settings`` default to the environment (``TIVIS_*``)."""
    cfg = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests share a bounded pool (a burst waits for a connection instead of failing);
        # event streams hold none of it: the hub reads for all of them on a client of its own.
        pool = aredis.BlockingConnectionPool.from_url(
            cfg.redis_url, max_connections=cfg.redis_max_connections, timeout=10
        )
        client = aredis.Redis(connection_pool=pool)
        events_client = aredis.Redis.from_url(cfg.redis_url, max_connections=2)
        celery = Celery("tivis-api")
        celery.conf.update(celery_config(cfg))
        template = await capture_template(client, celery, cfg)
        store = AsyncJobStore(client, cfg.key_prefix, cfg.ttl_seconds)
        events = EventHub(
            AsyncJobStore(events_client, cfg.key_prefix, cfg.ttl_seconds),
            cfg.max_event_streams,
            cfg.events_poll_seconds,
        )
        events.start()
        app.state.services = Services(
            settings=cfg,
            redis=client,
            store=store,
            celery=celery,
            events=events,
            template=template if cfg.enqueue == "atomic" else None,
        )
        # requeue (or cancel) the jobs of lost workers, even while no worker is alive
        sync = redis.Redis.from_url(cfg.redis_url)
        reaper = Reaper(JobStore(sync, cfg.key_prefix, cfg.ttl_seconds), queue_key(cfg),
                        template.render)  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(
            target=reap_every, args=(reaper, cfg.heartbeat_seconds, stop), name="tivis-reaper",
            daemon=True,
        )  # fmt: skip
        thread.start()
        try:
            yield
        finally:
            stop.set()
            await events.stop()
            await events_client.aclose()
            await client.aclose()
            await pool.disconnect()
            celery.close()
            sync.close()

    app = FastAPI(
        title="tivis",
        version="0.1.0",
        summary="Transformation-invariant class visualizations of CNN classifiers, as jobs",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(Guard, settings=cfg)
    secured = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(models.router, dependencies=secured)
    app.include_router(submit.router, dependencies=secured)
    app.include_router(classify.router, dependencies=secured)
    app.include_router(jobs.router, dependencies=secured)
    app.include_router(atlas.router, dependencies=secured)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            classify.add_schemas(base_openapi())
        return app.openapi_schema or base_openapi()

    app.openapi = openapi  # type: ignore[method-assign]

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False, response_model=None)
    async def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page)
        return JSONResponse({"name": "tivis", "docs": "/docs", "openapi": "/openapi.json"})

    return app


def _app_from_env() -> FastAPI:
    configure_logging(get_settings().log_level)
    return create_app()


app = _app_from_env()
