"""Webhooks: signed, retried, at-least-once deliveries of a job's events (Standard Webhooks).

A job whose spec names ``webhook: {url, events}`` gets one **delivery** per event it asked for:
``succeeded``, ``failed``, ``canceled`` (one each, id ``msg_<job>_<event>``, stable across retries
so receivers can drop duplicates) and ``progress`` (at most one every
``TIVIS_WEBHOOK_PROGRESS_SECONDS``, one attempt each, and one not yet sent when a newer one
exists is skipped as ``superseded``, so a slow receiver never piles up a backlog of them).

Flow (every step in Redis, so nothing is lost when a process dies):

1. Whoever changes a job's status (worker, API cancel) calls :meth:`Emitter.emit`: the delivery
   (its log entry and the exact body) is written under the job and put in the **due** set, scored
   by when it should be sent. Emitting the same (job, event) twice writes nothing the second time.
2. The webhook worker (``webhooks.celery_app``, its own Celery queue) polls the due set, **claims**
   each due delivery (its score moves a lease ahead, so one dispatcher wins) and sends the task
   ``tivis.webhook.deliver`` by name to its queue.
3. The task (:func:`deliver`) resolves the receiver's host, checks **every** address (SSRF:
   private, loopback, link-local and other non-global addresses are refused unless
   ``TIVIS_WEBHOOK_ALLOW_PRIVATE``), connects to a checked address (never resolving twice), and
   POSTs the body with ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``. A 2xx
   ends the delivery; an error, timeout or other status schedules the next attempt after the next
   delay of ``TIVIS_WEBHOOK_RETRY_SCHEDULE`` (default 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h:
   8 attempts over 27.6 hours), then gives up (``failed``). A worker lost mid-send leaves the
   claim to expire, and the delivery is sent again.

Log per job (``P:job:<id>:webhooks``, shown by ``GET /jobs/<id>``): per delivery its id, event,
status (``pending``, ``retrying``, ``delivered``, ``failed``, ``refused``), attempts, last HTTP
status and error, and times. Signature: ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.
{body}")) where the key is the base64-decoded part after ``whsec_`` of ``TIVIS_WEBHOOK_SECRET``
(or the secret's UTF-8 bytes when it has no such prefix); :func:`verify` is the receiver's check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlsplit

import redis
import redis.asyncio as aredis

from core.settings import Settings, signing_key
from core.store import decode_record

DELIVER_TASK = "tivis.webhook.deliver"
"""The Celery task (sent by name to ``TIVIS_WEBHOOK_QUEUE``) that makes one delivery attempt."""

FINAL = ("delivered", "failed", "refused", "superseded")
TOLERANCE_SECONDS = 300
"""How far a ``webhook-timestamp`` may be from the receiver's clock (replay protection)."""
MAX_PROGRESS_SHOWN = 5
DEFER_SECONDS = 1.0
"""A delivery whose receiver has no free sending slot is looked at again after this long."""
TARGET_SAFE = "/?:@!$&'()*+,;=%"
"""Characters of a URL's path and query sent as they are: the RFC 3986 delimiters a path and a
query may hold, and ``%`` (escapes already there are kept). Any other character that is not
unreserved is sent percent-encoded as UTF-8."""
log = logging.getLogger("tivis.webhooks")

# Write a delivery once. KEYS: deliveries, due; ARGV: name, entry, body, member, score, ttl,
# progress ("1": the job's newest progress delivery, which supersedes older unsent ones)
_EMIT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. '#body', ARGV[3])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], '#progress', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""

# Take a sending slot of one receiver. KEYS: slots; ARGV: now, token, until, limit
_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) - tonumber(ARGV[1])) + 1)
return 1
"""

# Claim a due delivery. KEYS: due; ARGV: member, now, lease until
_CLAIM = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


# --------------------------------------------------------------------------- keys


def deliveries_key(prefix: str, job_id: str) -> str:
    """Hash: delivery name -> JSON log entry, and ``<name>#body`` -> the exact body sent."""
    return f"{prefix}:job:{job_id}:webhooks"


def due_key(prefix: str) -> str:
    """Sorted set: ``<job id>|<delivery name>`` by the time it is due (or its claim expires)."""
    return f"{prefix}:webhooks:due"


def slots_key(prefix: str, url: str) -> str:
    """Sorted set: the sends now in flight to one receiver (host and port), by when they end at
    the latest; at most ``TIVIS_WEBHOOK_PER_HOST`` of them."""
    parts = urlsplit(url)
    return f"{prefix}:webhooks:inflight:{(parts.hostname or '').lower()}:{parts.port or ''}"


def message_id(job_id: str, name: str) -> str:
    """The stable ``webhook-id`` of one delivery: the same for every retry."""
    return f"msg_{job_id}_{name.replace('.', '_')}"


# --------------------------------------------------------------------------- signatures


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """A receiver's check: the timestamp is recent and one of the space-separated ``v1,``
    signatures matches (constant-time). Header names are looked up case-insensitively."""
    low = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, sigs = (low.get(h) for h in ("webhook-id", "webhook-timestamp",
                                                  "webhook-signature"))  # fmt: skip
    if not (msg_id and stamp and sigs):
        return False
    try:
        ts = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in sigs.split())


# --------------------------------------------------------------------------- SSRF


class RefusedAddress(ValueError):
    """The receiver's host is (or resolves to) an address deliveries may not go to."""


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why ``address`` is refused (``None``: allowed). Unspecified and multicast addresses are
    always refused; private, loopback, link-local, reserved and other non-global ones unless
    ``allow_private``. IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is {'unspecified' if ip.is_unspecified else 'multicast'}"
    if allow_private or ip.is_global:
        return None
    for what in ("loopback", "link_local", "private", "reserved"):
        if getattr(ip, f"is_{what}"):
            return f"{ip} is a {what.replace('_', '-')} address"
    return f"{ip} is not a global address"


def resolve_checked(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address ``host`` resolves to, checked; :class:`RefusedAddress` if any is refused or
    none resolves. Deliveries then connect to these addresses, not to the name again."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedAddress(f"cannot resolve the webhook host {host!r}: {exc}") from exc
    addresses: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in addresses:
            addresses.append(addr)
    if not addresses:
        raise RefusedAddress(f"the webhook host {host!r} has no address")
    for addr in addresses:
        why = address_problem(addr, allow_private)
        if why:
            where = repr(host) if host == addr else f"{host!r} ({addr})"
            raise RefusedAddress(f"webhook receiver {where} refused: {why} "
                                 "(TIVIS_WEBHOOK_ALLOW_PRIVATE allows it)")  # fmt: skip
    return addresses


def check_url(url: str, allow_private: bool) -> list[str]:
    """Resolve and check the host of a webhook URL (see :func:`resolve_checked`)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return resolve_checked(host, parts.port or (443 if parts.scheme == "https" else 80),
                           allow_private)  # fmt: skip


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand (the Host header keeps the name)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is checked against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        ctx = cast(ssl.SSLContext, self._context)  # type: ignore[attr-defined]
        self.sock = ctx.wrap_socket(sock, server_hostname=self.host)


def post(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout: float, allow_private: bool
) -> int:
    """POST ``body`` to ``url`` and return the HTTP status. The host is resolved once and every
    address checked (:class:`RefusedAddress`); the connection goes to a checked address.
    Redirects are not followed (a 3xx is not a delivery). A path or query that is not ASCII is
    sent percent-encoded (UTF-8). ``OSError`` on network errors and timeouts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    addresses = resolve_checked(host, port, allow_private)
    path = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), TARGET_SAFE)
    cls = _PinnedHTTPS if https else _PinnedHTTP
    last: OSError | None = None
    for address in addresses:
        conn = cls(host, port, address, timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:  # next address
                last = exc
                continue
            conn.request("POST", path, body=body, headers=dict(headers))
            resp = conn.getresponse()
            resp.read(65536)
            return int(resp.status)
        finally:
            conn.close()
    raise last or OSError(f"could not connect to {host}")


# --------------------------------------------------------------------------- emitting


def webhook_of(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``webhook`` of a job record's spec, or ``None``."""
    spec = rec.get("spec") or {}
    hook = spec.get("webhook") if isinstance(spec, dict) else None
    return hook if isinstance(hook, dict) and hook.get("url") else None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(rec: Mapping[str, Any], event: str, now: float) -> dict[str, Any]:
    """The body of a delivery: ``{type: "job.<event>", timestamp, data: {the job's status}}``.
    The result itself is not sent: ``data.url`` is where to read it."""
    job_id = str(rec["id"])
    data = {
        "id": job_id,
        "kind": rec.get("kind"),
        "status": rec.get("status"),
        "attempts": rec.get("attempts", 0),
        "progress": rec.get("progress"),
        "error": rec.get("error"),
        "created_at": _iso(rec.get("created_at")),
        "started_at": _iso(rec.get("started_at")),
        "finished_at": _iso(rec.get("finished_at")),
        "url": f"/jobs/{job_id}",
    }
    return {"type": f"job.{event}", "timestamp": _iso(now), "data": data}


def _emit_args(
    prefix: str, ttl: int, rec: Mapping[str, Any], event: str, name: str, now: float
) -> tuple[list[str], list[Any]] | None:
    hook = webhook_of(rec)
    if hook is None or event not in (hook.get("events") or ()):
        return None
    job_id = str(rec["id"])
    entry = {
        "id": message_id(job_id, name),
        "event": event,
        "url": hook["url"],
        "status": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "created_at": now,
        "last_attempt_at": None,
        "next_attempt_at": now,
    }
    body = json.dumps(payload(rec, event, now), separators=(",", ":"))
    keys = [deliveries_key(prefix, job_id), due_key(prefix)]
    progress = "1" if event == "progress" else "0"
    return keys, [name, json.dumps(entry), body, f"{job_id}|{name}", repr(now), ttl, progress]


class Emitter:
    """Writes deliveries for a job's events (the worker's side: synchronous Redis)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = ttl
        self._emit = client.register_script(_EMIT)

    def emit(self, job_id: str, event: str, *, name: str | None = None,
             rec: Mapping[str, Any] | None = None) -> bool:  # fmt: skip
        """Queue the delivery of ``event`` if the job asked for it; returns whether one was
        written (False too when it already was). ``rec``: the record, if the caller has a current
        one; ``name``: the delivery's name (default: the event)."""
        if rec is None:
            rec = decode_record(cast(dict[bytes, bytes],
                                     self.r.hgetall(f"{self.prefix}:job:{job_id}")))  # fmt: skip
            if rec is None:
                return False
        args = _emit_args(self.prefix, self.ttl, rec, event, name or event, time.time())
        if args is None:
            return False
        return bool(self._emit(keys=args[0], args=args[1]))

    def safe_emit(self, job_id: str, event: str, **kw: Any) -> None:
        """:meth:`emit`, logging instead of raising: a webhook never breaks a job."""
        try:
            if self.emit(job_id, event, **kw):
                log.info("webhook queued", extra={"job_id": job_id, "event": event})
        except Exception:
            log.exception("could not queue a webhook", extra={"job_id": job_id, "event": event})


class AsyncEmitter:
    """The API's side of :class:`Emitter` (asyncio Redis)."""

    def __init__(self, client: aredis.Redis, prefix: str, ttl: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = ttl
        self._emit = client.register_script(_EMIT)

    async def emit(self, rec: Mapping[str, Any], event: str) -> bool:
        args = _emit_args(self.prefix, self.ttl, rec, event, event, time.time())
        if args is None:
            return False
        return bool(await self._emit(keys=args[0], args=args[1]))

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's deliveries, oldest first (only the last few progress ones)."""
        raw = await self.r.hgetall(deliveries_key(self.prefix, job_id))
        return shown_deliveries(raw)


def shown_deliveries(raw: Mapping[Any, Any]) -> list[dict[str, Any]]:
    """Log entries of a deliveries hash, oldest first; of progress deliveries the last
    :data:`MAX_PROGRESS_SHOWN`."""
    entries = []
    for k, v in raw.items():
        key = k.decode() if isinstance(k, bytes) else str(k)
        if "#" not in key:
            entries.append(json.loads(v))
    entries.sort(key=lambda e: (e.get("created_at") or 0.0, e.get("id", "")))
    progress = [e for e in entries if e.get("event") == "progress"]
    drop = {id(e) for e in progress[:-MAX_PROGRESS_SHOWN]} if progress else set()
    out = []
    for e in entries:
        if id(e) in drop:
            continue
        for f in ("created_at", "last_attempt_at", "next_attempt_at"):
            e[f] = _iso(e.get(f))
        out.append(e)
    return out


# --------------------------------------------------------------------------- sending


def claim_due(client: redis.Redis, prefix: str, *, lease: float, limit: int = 100) -> list[str]:
    """Claim up to ``limit`` due deliveries (their score moves ``lease`` seconds ahead, so no
    other dispatcher takes them until then); returns their members ``<job>|<name>``."""
    now = time.time()
    key = due_key(prefix)
    members = cast(list[bytes], client.zrangebyscore(key, "-inf", repr(now), start=0, num=limit))
    claim = client.register_script(_CLAIM)
    out = []
    for m in members:
        if claim(keys=[key], args=[m, repr(now), repr(now + lease)]):
            out.append(m.decode())
    return out


def lease_seconds(settings: Settings) -> float:
    """How long a claimed delivery is left to its task before it is dispatched again."""
    return 300.0 + 3 * settings.webhook_timeout


def deliver(client: redis.Redis, settings: Settings, member: str) -> str:
    """One attempt of the delivery ``member`` (``<job id>|<name>``); returns its new status."""
    prefix = settings.key_prefix
    job_id, _, name = member.partition("|")
    key, due = deliveries_key(prefix, job_id), due_key(prefix)
    raw, body, newest = cast(
        list[bytes | None], client.hmget(key, [name, f"{name}#body", "#progress"])
    )
    if raw is None or body is None:
        client.zrem(due, member)
        return "missing"
    entry = json.loads(raw)
    if entry["event"] == "progress" and newest is not None and newest.decode() != name:
        entry["status"] = "superseded"  # a newer progress event is on its way: skip this one
        pipe = client.pipeline(transaction=True)
        pipe.hset(key, name, json.dumps(entry))
        pipe.zrem(due, member)
        pipe.execute()
    if entry["status"] in FINAL:
        client.zrem(due, member)
        return str(entry["status"])
    now = time.time()
    slots, token = slots_key(prefix, entry["url"]), f"{member}|{now!r}"
    until = now + 2 * settings.webhook_timeout + 30
    took = client.register_script(_SLOT)(
        keys=[slots], args=[repr(now), token, repr(until), settings.webhook_per_host]
    )
    if not took:  # this receiver already has its share of the threads: try again shortly
        client.zadd(due, {member: now + DEFER_SECONDS})
        return "deferred"
    try:
        return _attempt(client, settings, member, entry, body, now)
    finally:
        client.zrem(slots, token)


def _attempt(
    client: redis.Redis, settings: Settings, member: str, entry: dict[str, Any], body: bytes,
    now: float,
) -> str:  # fmt: skip
    job_id, _, name = member.partition("|")
    key, due = deliveries_key(settings.key_prefix, job_id), due_key(settings.key_prefix)
    attempt = int(entry["attempts"]) + 1
    stamp = int(now)
    code: int | None = None
    error: str | None = None
    refused = False
    try:
        headers = {
            "content-type": "application/json",
            "user-agent": "tivis-webhooks/1",
            "webhook-id": entry["id"],
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(settings.webhook_secret, entry["id"], stamp, body),
        }
        code = post(entry["url"], body, headers, timeout=settings.webhook_timeout,
                    allow_private=settings.webhook_allow_private)  # fmt: skip
        if not 200 <= code < 300:
            error = f"HTTP {code}"
    except RefusedAddress as exc:
        refused, error = True, str(exc)
    except Exception as exc:  # a network error, or anything else: a failed attempt all the same
        if not isinstance(exc, (OSError, http.client.HTTPException)):
            log.exception("webhook attempt raised", extra={"job_id": job_id, "event": name})
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    delays = settings.webhook_retry_delays
    entry.update(attempts=attempt, last_status=code, last_error=error, last_attempt_at=now)
    pipe = client.pipeline(transaction=True)
    if error is None:
        entry.update(status="delivered", next_attempt_at=None)
        pipe.zrem(due, member)
    elif refused or entry["event"] == "progress" or attempt > len(delays):
        entry.update(status="refused" if refused else "failed", next_attempt_at=None)
        pipe.zrem(due, member)
    else:
        nxt = now + delays[attempt - 1]
        entry.update(status="retrying", next_attempt_at=nxt)
        pipe.zadd(due, {member: nxt})
    pipe.hset(key, name, json.dumps(entry))
    pipe.execute()
    level = logging.INFO if error is None else logging.WARNING
    extra = {"job_id": job_id, "webhook_id": entry["id"], "event": entry["event"],
             "attempt": attempt, "http_status": code, "error": error,
             "next_attempt_at": entry["next_attempt_at"]}  # fmt: skip
    log.log(level, "webhook " + entry["status"], extra=extra)
    return str(entry["status"])


def celery_config(settings: Settings) -> dict[str, Any]:
    """The webhook worker's Celery settings: its own queue, under the service's key prefix.
    Early acks: a delivery's durability is its entry in the due set (a lost task's claim
    expires and it is dispatched again), not the broker message."""
    from core.queue import broker_prefix

    queue = settings.webhook_queue
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {"global_keyprefix": broker_prefix(settings)},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": queue,
        "task_routes": {DELIVER_TASK: {"queue": queue}},
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
