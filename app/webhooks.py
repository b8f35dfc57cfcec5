"""The API's part of webhooks (``core.webhooks``): the receiver check at submission, the cancel
event of a queued job, and the delivery log shown by ``GET /jobs/<id>``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from app.deps import Services
from app.problems import Problem
from core.webhooks import AsyncEmitter, RefusedAddress, check_url, webhook_of

log = logging.getLogger("tivis.api")


def emitter(services: Services) -> AsyncEmitter:
    cfg = services.settings
    return AsyncEmitter(services.redis, cfg.key_prefix, cfg.ttl_seconds)


async def check_webhook(services: Services, body: Mapping[str, Any]) -> None:
    """422 naming ``webhook.url`` when the receiver's host resolves to an address deliveries may
    not go to (or to none), or ``webhook`` when the service has no signing secret."""
    hook = webhook_of({"spec": body})
    if hook is None:
        return
    cfg = services.settings
    if not cfg.webhook_secret:
        msg = "webhooks are off on this service (no TIVIS_WEBHOOK_SECRET is set)"
        raise Problem(422, "webhooks-off", msg, errors=[{"field": "webhook", "message": msg}])
    url = str(hook["url"])
    try:
        await anyio.to_thread.run_sync(check_url, url, cfg.webhook_allow_private)
    except RefusedAddress as exc:
        raise Problem(
            422, "webhook-refused", str(exc), title="Webhook receiver refused",
            errors=[{"field": "webhook.url", "message": str(exc)}],
        ) from exc  # fmt: skip


async def emit_canceled(services: Services, rec: Mapping[str, Any]) -> None:
    """The ``canceled`` event of a job the API canceled while it was queued."""
    try:
        await emitter(services).emit(rec, "canceled")
    except Exception:
        log.exception("could not queue a webhook", extra={"job_id": rec.get("id")})


async def webhook_view(services: Services, rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{url, events, deliveries: [...]}`` for a job that named a webhook, else ``None``."""
    hook = webhook_of(rec)
    if hook is None:
        return None
    deliveries = await emitter(services).deliveries(str(rec["id"]))
    return {"url": hook["url"], "events": hook.get("events"), "deliveries": deliveries}
