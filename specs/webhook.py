"""The ``webhook`` field every job spec accepts: where to announce the job's events.

``{"url": "https://example.com/hook", "events": ["succeeded", "failed"]}``. Only the form is
checked here (an absolute ``http``/``https`` URL with a host, events among :data:`WEBHOOK_EVENTS`);
whether the host is a public address is a check of the service (``core.webhooks``), made when the
job is submitted and again when each delivery is sent.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

WebhookEvent = Literal["succeeded", "failed", "canceled", "progress"]
WEBHOOK_EVENTS: tuple[str, ...] = ("succeeded", "failed", "canceled", "progress")
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "canceled")
MAX_URL_LENGTH = 2048


class WebhookSpec(BaseModel):
    """A receiver of the job's events (Standard Webhooks deliveries, signed, retried)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="absolute http(s) URL of the receiver; private, loopback and link-local "
        "addresses are refused unless TIVIS_WEBHOOK_ALLOW_PRIVATE is set",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="which events are delivered: succeeded, failed, canceled, progress",
    )

    @field_validator("url")
    @classmethod
    def _absolute_http(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"the webhook URL must be http:// or https://, got {v!r}")
        if not parts.hostname:
            raise ValueError(f"the webhook URL has no host: {v!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the webhook URL must not carry credentials (user:password@)")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:
            raise ValueError(f"the webhook URL has a bad port: {exc}") from exc
        if any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError("the webhook URL must not contain spaces or control characters")
        return v

    @field_validator("events")
    @classmethod
    def _distinct(cls, v: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(v)) != len(v):
            raise ValueError("each webhook event may appear once")
        return v
