"""The door of every request, before any route runs: the API key and the body's limits.

:class:`Guard` is a plain ASGI middleware, so the key is checked before the body is read or
validated (401 before 413 or 422), compared as bytes in constant time (a non-ASCII key is just
a wrong key); a body may hold at most ``TIVIS_MAX_JSON_BYTES`` (413, from its Content-Length
before a byte is read, or as it streams in), whatever its content type, except a
``multipart/form-data`` body sent to one of the :data:`UPLOAD_ROUTES` (those have their own,
larger limits in :mod:`app.uploads` and :mod:`app.modelupload`); every body must arrive within
``TIVIS_BODY_TIMEOUT_SECONDS`` plus its size at :data:`MIN_BODY_RATE` (408). The
caller it lets in is a :class:`Principal`: the hash of its key (never the key) scopes the jobs it
may see, cancel and replay; an admin key (``TIVIS_ADMIN_KEYS``) sees every job.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.problems import problem_response
from core.settings import Settings

MIN_BODY_RATE = 64 * 1024
"""Bytes per second a body must keep arriving at, after ``TIVIS_BODY_TIMEOUT_SECONDS``."""

PRINCIPAL = "tivis.principal"
"""The scope key holding the request's :class:`Principal`."""

OPEN_PATHS = frozenset(
    {"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
"""Paths served without a key (with ``/static/...``): health checks, the page, the docs."""


UPLOAD_ROUTES = frozenset({("POST", "/classify"), ("POST", "/screen"), ("POST", "/models")})
"""``(method, path)`` of the routes that read a ``multipart/form-data`` body themselves."""


def key_owner(key: bytes) -> str:
    """What a job record keeps of the API key that made it: a hash, never the key."""
    return hashlib.sha256(b"tivis-api-key:" + key).hexdigest()[:32]


@dataclass(frozen=True)
class Principal:
    """Who is asking: ``owner`` is the hash of the API key (``None`` when keys are off, where
    every caller sees every job); ``admin`` sees and cancels every key's jobs."""

    owner: str | None = None
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose jobs this caller sees; ``None``: all jobs."""
        return None if self.admin else self.owner

    def sees(self, rec: Mapping[str, Any]) -> bool:
        """Whether this caller may read (and cancel, and use) the job ``rec``."""
        return self.scope is None or rec.get("owner") == self.scope

    @property
    def quota(self) -> str:
        """The name its queued jobs are counted under (one for all callers when keys are off)."""
        return self.owner or "anonymous"


ANONYMOUS = Principal()


def _too_large(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes (TIVIS_MAX_JSON_BYTES)"


def _is_multipart(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().startswith(b"multipart/form-data")
    return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isascii() and value.isdigit() else None
    return None


def given_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The raw bytes of ``X-API-Key`` or of ``Authorization: Bearer <key>``."""
    auth = None
    for name, value in headers:
        name = name.lower()
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and auth is None:
            auth = value
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    return None


class Guard:
    """ASGI middleware: the key check (:data:`OPEN_PATHS` excepted) and the body deadline."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.admin = [k.encode() for k in sorted(settings.admin_key_set)]
        self.required = bool(settings.api_key_set)  # without API keys, no key is required
        self.keys = [k.encode() for k in sorted(settings.api_key_set)] + self.admin
        self.timeout = settings.body_timeout_seconds
        self.max_json = settings.max_json_bytes

    def match(self, given: bytes) -> bytes | None:
        """The configured key equal to ``given`` (every key compared, in constant time)."""
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = ANONYMOUS
        path: str = scope["path"]
        if self.required and path not in OPEN_PATHS and not path.startswith("/static/"):
            given = given_key(scope["headers"])
            key = self.match(given) if given else None
            if key is None:
                response = problem_response(
                    Request(scope),
                    401,
                    "unauthorized",
                    "an API key is required: send 'X-API-Key: <key>' or "
                    "'Authorization: Bearer <key>'"
                    if not given
                    else "the API key is not valid",
                    headers={"WWW-Authenticate": 'Bearer realm="tivis"'},
                )
                await response(scope, receive, send)
                return
            principal = Principal(key_owner(key), key in self.admin)
        elif self.admin:  # no API keys: everyone sees every job, but admin rights need the key
            given = given_key(scope["headers"])
            key = self.match(given) if given else None
            if key is not None and key in self.admin:
                principal = Principal(None, admin=True)
        scope[PRINCIPAL] = principal
        upload = (scope["method"], path) in UPLOAD_ROUTES and _is_multipart(scope["headers"])
        limit = None if upload else self.max_json
        declared = _content_length(scope["headers"])
        if limit is not None and declared is not None and declared > limit:
            response = problem_response(Request(scope), 413, "body-too-large", _too_large(limit))
            await response(scope, receive, send)
            return
        await self.app(scope, self.guarded(receive, limit), send)

    def guarded(self, receive: Receive, limit: int | None) -> Receive:
        """``receive`` with a deadline for the whole request body (408 past it) and at most
        ``limit`` bytes of it (413); once the body has ended, messages (a disconnect) pass
        through with no deadline."""
        timeout = self.timeout
        ends: float | None = None
        done = False
        size = 0

        async def guarded() -> Message:
            nonlocal ends, done, size
            if done:
                return await receive()
            if ends is None:
                ends = time.monotonic() + timeout
            message: Message | None = None
            # every byte received moves the deadline on at MIN_BODY_RATE: a large upload that
            # keeps coming is never cut, a trickle is
            with anyio.move_on_after(max(0.0, ends + size / MIN_BODY_RATE - time.monotonic())):
                message = await receive()
            if message is None:
                raise HTTPException(
                    408,
                    f"the request body did not arrive in time ({timeout:g} s, then at least "
                    f"{MIN_BODY_RATE // 1024} KiB/s)",
                )
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            if message["type"] == "http.request" and limit is not None:
                size += len(message.get("body", b""))
                if size > limit:
                    raise HTTPException(413, _too_large(limit))
            return message

        return guarded
