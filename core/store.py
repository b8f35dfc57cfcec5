"""Job records, progress, cancel flags, artifacts, catalog, heartbeats and metrics in Redis.

The one place that knows the Redis keys. Torch-free and FastAPI-free: the API uses
:class:`AsyncJobStore`, the worker :class:`JobStore`; both run the same Lua scripts, so every
status change is atomic (a queued job canceled while a worker picks it up ends in exactly one
state). Every key lives under ``<prefix>:`` and carries a TTL; a job's record, uploads and
artifact pointers get theirs anew whenever the job starts and when it ends, so a job outlives its
run (``TIVIS_TTL_SECONDS`` exceeds the hard time limit), and no write re-creates an expired record.

Layout (``P`` = prefix):

- ``P:job:<id>``                hash: the job record (status, kind, spec, progress, result, ...)
- ``P:job:<id>:artifacts``      hash: artifact name -> JSON pointer ``{key, media_type, size,
  etag}`` into the artifact store (``core.artifacts``; the bytes live there, not in Redis);
  written once, at success (an atlas: per chunk, see ``core.chunks``)
- ``P:job:<id>:uploads``        hash: upload name -> image bytes of a classify/screen job
  (written with the record, in the same transaction; read by the worker)
- ``P:job:<id>:staging:<n>``    hash: artifact pointers of attempt ``n`` until it succeeds
- ``P:job:<id>:chunks``         hash (atlas): chunk number -> JSON {classes, worker, ...} once
  published; ``P:job:<id>:chunk_attempts`` hash: chunk number -> starts (``core.chunks``)
- ``P:jobs``                    sorted set: every job id by creation time (for listing)
- ``P:idem:<key>``              string: ``<job id>|<body hash>`` of an ``Idempotency-Key``
  (the API scopes the key to the API key that sent it)
- ``P:owner:<hash>:queued``     sorted set: queued job ids of one API key (its queue limit)
- ``P:catalog``                 hash: model name -> JSON {info, labels, worker, updated}
- ``P:registrations``           hash: ``name@v`` -> JSON of a model registration (POST /models)
- ``P:model-versions``          hash: model name -> last version number given out
- ``P:worker:<name>``           string with a short TTL: a live worker's heartbeat, JSON; its
  ``pool`` lists the worker's live processes (the pool processes that run jobs) at time ``at``
- ``P:running``                 hash: job id -> name of the worker running it (for the reaper)
- ``P:metrics:current``         hash: ``kind|status`` -> number of jobs now queued / running
- ``P:metrics:total``           hash: ``kind|status`` -> jobs that reached that status
- ``P:metrics:duration:<kind>`` hash: histogram buckets, ``sum`` and ``count`` of run times
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio as aredis

TERMINAL = ("succeeded", "failed", "canceled")
DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
JSON_FIELDS = ("spec", "progress", "error", "result", "artifacts", "cost")

# Create a job (and its idempotency key) atomically.
# KEYS: record, index, current, total, idem ("" = none), queue ("" = none), uploads
# ARGV: ttl, score, id, idem value, kind, message, n, then the record's n field/value items,
# then name/bytes pairs of the job's uploaded images (none: nothing written to KEYS[7])
_CREATE = """
if KEYS[5] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
  redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[1])
end
local last = 7 + tonumber(ARGV[7])
local fields = {}
for i = 8, last do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if #ARGV > last then
  for i = last + 1, #ARGV, 2 do redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[7], ARGV[1])
end
if KEYS[6] ~= '' then redis.call('LPUSH', KEYS[6], ARGV[6]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[5] .. '|queued', 1)
redis.call('EXPIRE', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[5] .. '|queued', 1)
redis.call('EXPIRE', KEYS[4], ARGV[1])
return {1, ARGV[3]}
"""

# Shared Lua helper: move the current/total gauges from one status to another.
_MOVE = """
local function move(cur, tot, kind, from, to, ttl)
  if from == to then return end
  if from == 'queued' or from == 'running' then
    redis.call('HINCRBY', cur, kind .. '|' .. from, -1)
  end
  if to == 'queued' or to == 'running' then redis.call('HINCRBY', cur, kind .. '|' .. to, 1) end
  redis.call('HINCRBY', tot, kind .. '|' .. to, 1)
  redis.call('EXPIRE', cur, ttl)
  redis.call('EXPIRE', tot, ttl)
end
"""

# Shared Lua helper: is the process that runs a job still alive? The job's worker (``w``, its
# main process) must beat, and when its heartbeat lists its pool processes as they were at a
# time after the job started, that list must hold the job's process (``worker_pid``): a pool
# process killed under a live main process (the OOM killer) leaves its job to be restarted or
# reaped. Without a pid or a list (an older worker, another pool), the heartbeat alone counts.
_ALIVE = """
local function runner_alive(rec, w, worker_prefix)
  local beat = redis.call('GET', worker_prefix .. w)
  if not beat then return false end
  local pid = tonumber(redis.call('HGET', rec, 'worker_pid') or '')
  local started = tonumber(redis.call('HGET', rec, 'started_at') or '')
  if not pid or not started then return true end
  local ok, info = pcall(cjson.decode, beat)
  if not ok or type(info) ~= 'table' or type(info.pool) ~= 'table'
      or type(info.at) ~= 'number' or info.at <= started then
    return true
  end
  for _, p in ipairs(info.pool) do
    if p == pid then return true end
  end
  return false
end
"""

# A worker starts (or restarts, after redelivery) a job. A job still running on another worker
# whose process lives (``runner_alive``) is left alone (a late redelivery of a message the reaper
# replaced).
# KEYS: record, current, total, running, uploads, artifacts; ARGV: now, max_attempts, ttl,
# worker, worker key prefix, job id, pid of the process that runs it ('' = unknown). (The
# heartbeat key of the record's worker is read by name: standalone Redis.) The record, its
# uploads and artifact pointers get their TTL anew.
# Returns {verdict, status or attempts}: run | skip | busy | canceled | exhausted | missing
_START = (
    _MOVE
    + _ALIVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing', ''} end
if s ~= 'queued' and s ~= 'running' then return {'skip', s} end
if s == 'running' then
  local w = redis.call('HGET', KEYS[1], 'worker')
  if w and w ~= '' and w ~= ARGV[4] and runner_alive(KEYS[1], w, ARGV[5]) then
    return {'busy', w}
  end
end
local kind = redis.call('HGET', KEYS[1], 'kind')
redis.call('HDEL', KEYS[4], ARGV[6])
for _, key in ipairs({KEYS[1], KEYS[5], KEYS[6]}) do redis.call('EXPIRE', key, ARGV[3]) end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  move(KEYS[2], KEYS[3], kind, s, 'canceled', ARGV[3])
  return {'canceled', s}
end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n > tonumber(ARGV[2]) then
  local err = cjson.encode({type = 'TooManyAttempts',
    message = 'the job was started ' .. (n - 1) .. ' times without finishing (worker lost?)'})
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'error', err)
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  move(KEYS[2], KEYS[3], kind, s, 'failed', ARGV[3])
  return {'exhausted', tostring(n - 1)}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'progress', '',
  'worker', ARGV[4], 'worker_pid', ARGV[7])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
move(KEYS[2], KEYS[3], kind, s, 'running', ARGV[3])
return {'run', tostring(n)}
"""
)

# A worker finishes attempt n: only if the record is still running that attempt. The record,
# its artifact pointers and uploads get their TTL anew.
# KEYS: record, current, total, staging, final, running, uploads; ARGV: attempt, status, ttl,
# now, field/value...
_FINISH = (
    _MOVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
local n = redis.call('HGET', KEYS[1], 'attempts')
if s ~= 'running' or n ~= ARGV[1] then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[5])
if ARGV[2] == 'succeeded' and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[5])
  redis.call('EXPIRE', KEYS[5], ARGV[3])
else
  redis.call('DEL', KEYS[4])
end
local fields = {'status', ARGV[2], 'finished_at', ARGV[4]}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
for _, key in ipairs({KEYS[1], KEYS[5], KEYS[7]}) do redis.call('EXPIRE', key, ARGV[3]) end
local kind = redis.call('HGET', KEYS[1], 'kind')
redis.call('HDEL', KEYS[6], redis.call('HGET', KEYS[1], 'id'))
move(KEYS[2], KEYS[3], kind, s, ARGV[2], ARGV[3])
return 1
"""
)

# A worker reports progress: written only while the record exists (a record that expired is not
# re-created). KEYS: record; ARGV: progress JSON. Returns {cancel_requested, status, attempts}
# (all nil for a missing record).
_PROGRESS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return redis.call('HMGET', KEYS[1], 'cancel_requested', 'status', 'attempts')
"""

# Cancel. KEYS: record, current, total, running; ARGV: now, ttl, worker key prefix, job id
# Returns {verdict, status}: canceled (was queued, or the process running it is gone) | requested
# (running) | finished | missing
_CANCEL = (
    _MOVE
    + _ALIVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing', ''} end
if s ~= 'queued' and s ~= 'running' then return {'finished', s} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  move(KEYS[2], KEYS[3], redis.call('HGET', KEYS[1], 'kind'), s, 'canceled', ARGV[2])
  return {'canceled', 'canceled'}
end
local w = redis.call('HGET', KEYS[1], 'worker')
if w and w ~= '' and not runner_alive(KEYS[1], w, ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[4])
  move(KEYS[2], KEYS[3], redis.call('HGET', KEYS[1], 'kind'), s, 'canceled', ARGV[2])
  return {'canceled', 'canceled'}
end
return {'requested', s}
"""
)

# The reaper claims a job whose process is gone (its worker stopped beating, or the pool process
# running it died: ``runner_alive``): requeued (a new broker message, pushed here so claim and
# message are one step) or canceled if cancel was asked. Exactly once: only while the running
# entry still names that worker and the job's process is still gone.
# KEYS: record, current, total, running, queue; ARGV: job id, worker, now, ttl, worker key
# prefix, message. Returns {verdict, attempts}: requeued | canceled | alive | moved | gone
_REAP = (
    _MOVE
    + _ALIVE
    + """
if redis.call('HGET', KEYS[4], ARGV[1]) ~= ARGV[2] then return {'moved', ''} end
local s = redis.call('HGET', KEYS[1], 'status')
local mine = s == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[2]
if mine and runner_alive(KEYS[1], ARGV[2], ARGV[5]) then return {'alive', ''} end
redis.call('HDEL', KEYS[4], ARGV[1])
if not mine then return {'gone', s or ''} end
local kind = redis.call('HGET', KEYS[1], 'kind')
local n = redis.call('HGET', KEYS[1], 'attempts') or '0'
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[3])
  move(KEYS[2], KEYS[3], kind, s, 'canceled', ARGV[4])
  return {'canceled', n}
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'requeued_at', ARGV[3], 'worker', '')
redis.call('HINCRBY', KEYS[1], 'requeues', 1)
move(KEYS[2], KEYS[3], kind, s, 'queued', ARGV[4])
redis.call('RPUSH', KEYS[5], ARGV[6])
return {'requeued', n}
"""
)


# Which running jobs have lost their process (``runner_alive``)? KEYS: the job records;
# ARGV: worker key prefix, then the worker named for each record in ``P:running``.
# Returns the positions (1-based) of the lost ones.
_LOST = (
    _ALIVE
    + """
local out = {}
for i, rec in ipairs(KEYS) do
  if not runner_alive(rec, ARGV[i + 1], ARGV[1]) then out[#out + 1] = i end
end
return out
"""
)

# Admit one more queued job of an API key (``TIVIS_MAX_QUEUED_PER_KEY``) and reserve its place.
# KEYS: the key's set of queued job ids; ARGV: job key prefix, limit, job id, score, ttl.
# Only when the set is full are its oldest 256 jobs looked at, and those that left ``queued``
# (or expired) dropped: the queue runs oldest first, so that is where places come free, and a
# submission costs O(1) (at most 256 reads at the limit). Returns the count, or -1: over.
_ADMIT = """
local limit = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, 255)) do
    if redis.call('HGET', ARGV[1] .. id, 'status') ~= 'queued' then
      redis.call('ZREM', KEYS[1], id)
    end
  end
  n = redis.call('ZCARD', KEYS[1])
  if n >= limit then return -1 end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return n + 1
"""


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` reused with a different request body."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"the Idempotency-Key was used for job {job_id} with a different body")


@dataclass(frozen=True)
class Keys:
    """Every Redis key of the service, under one prefix."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def artifacts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:artifacts"

    def uploads(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:uploads"

    def staging(self, job_id: str, attempt: int | str) -> str:
        return f"{self.prefix}:job:{job_id}:staging:{attempt}"

    def chunks(self, job_id: str) -> str:
        """An atlas's finished chunks: chunk number -> JSON of its classes (``core.chunks``)."""
        return f"{self.prefix}:job:{job_id}:chunks"

    def chunk_attempts(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:chunk_attempts"

    @property
    def index(self) -> str:
        return f"{self.prefix}:jobs"

    def idem(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.prefix}:idem:{digest}"

    def owner_queued(self, owner: str) -> str:
        """Sorted set: the queued jobs of one API key (by the key's hash), for its limit."""
        return f"{self.prefix}:owner:{owner}:queued"

    @property
    def catalog(self) -> str:
        return f"{self.prefix}:catalog"

    @property
    def registrations(self) -> str:
        return f"{self.prefix}:registrations"

    @property
    def model_versions(self) -> str:
        return f"{self.prefix}:model-versions"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    @property
    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    @property
    def worker_prefix(self) -> str:
        return f"{self.prefix}:worker:"

    @property
    def running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def current(self) -> str:
        return f"{self.prefix}:metrics:current"

    @property
    def total(self) -> str:
        return f"{self.prefix}:metrics:total"

    def duration(self, kind: str) -> str:
        return f"{self.prefix}:metrics:duration:{kind}"

    @property
    def duration_pattern(self) -> str:
        return f"{self.prefix}:metrics:duration:*"


def body_hash(obj: Any) -> str:
    """A stable hash of a JSON-ready request body (for idempotency)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _s(v: bytes | str | None) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else v


def decode_record(raw: Mapping[Any, Any]) -> dict[str, Any] | None:
    """A record hash as a dict: JSON fields parsed, numbers typed; ``None`` for a missing job."""
    if not raw:
        return None
    rec: dict[str, Any] = {_s(k) or "": _s(v) for k, v in raw.items()}
    for f in JSON_FIELDS:
        v = rec.get(f)
        rec[f] = json.loads(v) if v else None
    for f in ("created_at", "started_at", "finished_at"):
        v = rec.get(f)
        rec[f] = float(v) if v else None
    rec["attempts"] = int(rec.get("attempts") or 0)
    rec["cancel_requested"] = rec.get("cancel_requested") == "1"
    return rec


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``ValueError`` for a cursor that this module did not make."""
    try:
        pad = "=" * (-len(cursor) % 4)
        score, job_id = base64.urlsafe_b64decode(cursor + pad).decode().split("|", 1)
        value = float(score)
    except Exception as exc:
        raise ValueError("not a cursor returned by GET /jobs") from exc
    if not math.isfinite(value):
        raise ValueError("not a cursor returned by GET /jobs")
    return value, job_id


def _flatten(fields: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out.append(k)
        out.append(v if isinstance(v, str) else json.dumps(v))
    return out


def bucket_label(seconds: float) -> str:
    for le in DURATION_BUCKETS:
        if seconds <= le:
            return repr(le)
    return "+Inf"


def count_duration(r: redis.Redis, keys: Keys, kind: str, seconds: float, ttl: int) -> None:
    """Count one job's run time in its kind's duration histogram (``P:metrics:duration:<kind>``)."""
    key = keys.duration(kind)
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(key, bucket_label(seconds), 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.hincrby(key, "count", 1)
    pipe.expire(key, ttl)
    pipe.execute()


class _Base:
    def __init__(self, prefix: str, ttl: int) -> None:
        self.keys = Keys(prefix)
        self.ttl = ttl

    def _create_args(
        self, job_id: str, kind: str, spec: Mapping[str, Any], idem: tuple[str, str] | None,
        now: float, extra: Mapping[str, Any] | None, enqueue: tuple[str, str] | None = None,
        uploads: Mapping[str, bytes] | None = None,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        fields: dict[str, Any] = {
            "id": job_id,
            "kind": kind,
            "status": "queued",
            "created_at": repr(now),
            "attempts": "0",
            "spec": json.dumps(spec, separators=(",", ":")),
        }
        if extra:
            fields.update(extra)
        k = self.keys
        idem_key = k.idem(idem[0]) if idem else ""
        idem_val = f"{job_id}|{idem[1]}" if idem else ""
        queue, message = enqueue if enqueue else ("", "")
        keys = [k.job(job_id), k.index, k.current, k.total, idem_key, queue, k.uploads(job_id)]
        record = _flatten(fields)
        files: list[Any] = []
        for name, data in (uploads or {}).items():
            files += [name, data]
        return keys, [self.ttl, repr(now), job_id, idem_val, kind, message, len(record), *record,
                      *files]  # fmt: skip

    @staticmethod
    def _create_result(res: list[Any], idem: tuple[str, str] | None) -> tuple[str, bool]:
        created, value = int(res[0]), _s(res[1]) or ""
        if created:
            return value, True
        job_id, _, digest = value.partition("|")
        if idem is not None and digest != idem[1]:
            raise IdempotencyConflict(job_id)
        return job_id, False


class AsyncJobStore(_Base):
    """The API's side: create, read, list and cancel jobs; read catalog, heartbeats, metrics."""

    def __init__(self, client: aredis.Redis, prefix: str, ttl: int) -> None:
        super().__init__(prefix, ttl)
        self.r = client
        self._create = client.register_script(_CREATE)
        self._cancel = client.register_script(_CANCEL)
        self._admit = client.register_script(_ADMIT)

    async def admit(self, owner: str, job_id: str, limit: int) -> bool:
        """Reserve a place for ``job_id`` among ``owner``'s queued jobs; False when it already
        has ``limit`` queued jobs (see ``_ADMIT``)."""
        keys = [self.keys.owner_queued(owner)]
        args: list[str | int] = [self.keys.job(""), limit, job_id, repr(time.time()), self.ttl]
        return int(cast(int, await self._admit(keys=keys, args=args))) >= 0

    async def create(
        self,
        job_id: str,
        kind: str,
        spec: Mapping[str, Any],
        *,
        idempotency: tuple[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        enqueue: tuple[str, str] | None = None,
        uploads: Mapping[str, bytes] | None = None,
    ) -> tuple[str, bool]:
        """Store a queued job; returns ``(job id, created)``. With ``idempotency=(key, body
        hash)`` an earlier job of the same key is returned instead (``created`` False), or
        :class:`IdempotencyConflict` raised if its body differed. With ``enqueue=(queue key,
        message)`` the broker message is pushed in the same transaction (only if created), and
        so are ``uploads`` (name -> image bytes, under the job with the same TTL)."""
        keys, args = self._create_args(
            job_id, kind, spec, idempotency, time.time(), extra, enqueue, uploads
        )
        res = await self._create(keys=keys, args=args)
        return self._create_result(cast(list[Any], res), idempotency)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return decode_record(await self.r.hgetall(self.keys.job(job_id)))

    async def fail(self, job_id: str, error: Mapping[str, str]) -> None:
        """Mark a job that could not be queued as failed."""
        await self.r.hset(
            self.keys.job(job_id),
            mapping={"status": "failed", "finished_at": repr(time.time()),
                     "error": json.dumps(error)},
        )  # fmt: skip

    async def cancel(self, job_id: str) -> tuple[str, str]:
        k = self.keys
        keys = [k.job(job_id), k.current, k.total, k.running]
        args: list[str | int] = [repr(time.time()), self.ttl, k.worker_prefix, job_id]
        res = cast(list[Any], await self._cancel(keys=keys, args=args))
        return _s(res[0]) or "", _s(res[1]) or ""

    async def list_jobs(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: Iterable[str] | None = None,
        kind: Iterable[str] | None = None,
        max_scan: int = 5000,
        owner: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; ``(records, next cursor or None)``. Expired records are dropped;
        with ``owner``, only the jobs whose record names that owner.

        A call reads at most ``max_scan`` index rows. When that budget runs out before
        ``limit`` records matched, the page is short (maybe empty) and its cursor goes on after
        the last row read, so following the cursors reaches every job; the cursor is ``None``
        only once the index is read to its end."""
        want_status = set(status or ())
        want_kind = set(kind or ())
        # Keyset paging: ``pos`` is the last row passed, and each fetch starts again at its score
        # (never at an offset, which the expired rows this scan drops would shift). The rows at
        # that score up to ``pos`` (``ties``, in index order: id descending) come back first and
        # are passed over.
        pos: tuple[float, str] | None = decode_cursor(cursor) if cursor else None
        out: list[dict[str, Any]] = []
        scanned = 0
        batch = max(limit * 2, 50)
        ties = 0
        at_end = False
        while len(out) < limit and scanned < max_scan:
            num = batch + ties
            rows = cast(
                list[tuple[bytes, float]],
                await self.r.zrevrangebyscore(
                    self.keys.index, repr(pos[0]) if pos else "+inf", "-inf",
                    start=0, num=num, withscores=True,
                ),
            )  # fmt: skip
            ids = []
            for member, score in rows:
                jid = _s(member) or ""
                if pos is None or score < pos[0] or jid < pos[1]:
                    ids.append((jid, float(score)))
            if not ids:
                if len(rows) < num:
                    return out, None
                ties += batch  # more rows share pos's score than one fetch holds
                continue
            scanned += len(ids)
            pipe = self.r.pipeline(transaction=False)
            for jid, _ in ids:
                pipe.hgetall(self.keys.job(jid))
            raws = await pipe.execute()
            gone = []
            for (jid, score), raw in zip(ids, raws, strict=True):
                pos = (score, jid)
                rec = decode_record(raw)
                if rec is None:
                    gone.append(jid)
                    continue
                if want_status and rec["status"] not in want_status:
                    continue
                if want_kind and rec["kind"] not in want_kind:
                    continue
                if owner is not None and rec.get("owner") != owner:
                    continue
                rec["_score"] = score
                out.append(rec)
                if len(out) == limit:
                    break
            if gone:
                await self.r.zrem(self.keys.index, *gone)
            if len(rows) < num:
                at_end = True
                break
            ties = sum(1 for _, score in rows if score == rows[-1][1])  # pos is rows[-1]
        if len(out) == limit:
            last = out[-1]
            return out, encode_cursor(last["_score"], last["id"])
        if at_end or pos is None:
            return out, None
        return out, encode_cursor(*pos)  # the budget ran out: on after the last row read

    async def artifact(self, job_id: str, name: str) -> dict[str, Any] | None:
        """The published pointer of artifact ``name`` (``{key, media_type, size, etag}``)."""
        data = await self.r.hget(self.keys.artifacts(job_id), name)
        return json.loads(data) if data else None

    async def has_artifact(self, job_id: str, name: str) -> bool:
        return bool(await self.r.hexists(self.keys.artifacts(job_id), name))

    async def catalog(self) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self.keys.catalog)
        return {_s(k) or "": json.loads(v) for k, v in raw.items()}

    async def workers(self) -> list[dict[str, Any]]:
        names = [k async for k in self.r.scan_iter(match=self.keys.workers_pattern, count=100)]
        if not names:
            return []
        vals = await self.r.mget(names)
        return [json.loads(v) for v in vals if v]

    async def metrics(self) -> dict[str, Any]:
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(self.keys.current)
        pipe.hgetall(self.keys.total)
        current, total = await pipe.execute()
        durations: dict[str, dict[str, str]] = {}
        async for key in self.r.scan_iter(match=self.keys.duration_pattern, count=100):
            kind = (_s(key) or "").rsplit(":", 1)[-1]
            raw = await self.r.hgetall(key)
            durations[kind] = {_s(k) or "": _s(v) or "0" for k, v in raw.items()}
        return {
            "current": {_s(k) or "": int(v) for k, v in current.items()},
            "total": {_s(k) or "": int(v) for k, v in total.items()},
            "durations": durations,
        }

    # -- model registrations (the files live in the model store, core.modelstore) ----------
    async def next_model_version(self, name: str) -> int:
        """A version number for ``name`` that no registration has had (atomic)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(self.keys.model_versions, name, 1)
        pipe.expire(self.keys.model_versions, self.ttl)
        n, _ = await pipe.execute()
        return int(n)

    async def save_registration(self, ref: str, entry: Mapping[str, Any]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.registrations, ref, json.dumps(entry))
        pipe.expire(self.keys.registrations, self.ttl)
        await pipe.execute()

    async def registrations(self) -> dict[str, dict[str, Any]]:
        raw = await self.r.hgetall(self.keys.registrations)
        return {_s(k) or "": json.loads(v) for k, v in raw.items()}

    async def drop_registrations(self, refs: Iterable[str]) -> None:
        refs = list(refs)
        if refs:
            await self.r.hdel(self.keys.registrations, *refs)


class JobStore(_Base):
    """The worker's side (also used by tests and benchmarks): synchronous."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        super().__init__(prefix, ttl)
        self.r = client
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._reap = client.register_script(_REAP)
        self._lost = client.register_script(_LOST)
        self._progress = client.register_script(_PROGRESS)

    def get(self, job_id: str) -> dict[str, Any] | None:
        return decode_record(cast(dict[bytes, bytes], self.r.hgetall(self.keys.job(job_id))))

    def start(
        self, job_id: str, max_attempts: int, worker: str = "", pid: int | None = None
    ) -> tuple[str, str]:
        """Begin an attempt on ``worker`` (its heartbeat name) in its process ``pid`` (the pool
        process that runs the job; the worker's heartbeat lists its live ones):
        ``("run", attempt)`` or why not (skip, busy, canceled, exhausted, missing). Partial
        artifacts of earlier attempts are deleted."""
        k = self.keys
        runner = "" if pid is None else str(pid)
        args: list[str | int] = [
            repr(time.time()), max_attempts, self.ttl, worker, k.worker_prefix, job_id, runner
        ]  # fmt: skip
        keys = [k.job(job_id), k.current, k.total, k.running, k.uploads(job_id),
                k.artifacts(job_id)]  # fmt: skip
        res = cast(list[Any], self._start(keys=keys, args=args))
        verdict, info = _s(res[0]) or "", _s(res[1]) or ""
        if verdict == "run":
            stale = [k.staging(job_id, n) for n in range(1, int(info) + 1)]
            self.r.delete(*stale)
        return verdict, info

    def progress(
        self, job_id: str, progress: Mapping[str, Any], attempt: int | None = None
    ) -> bool:
        """Write progress; returns whether to stop: a cancel was requested, the record is gone
        (expired; it is not re-created), or (given ``attempt``) that attempt is no longer the
        job's running one (the reaper requeued it)."""
        res = cast(
            list[Any], self._progress(keys=[self.keys.job(job_id)], args=[json.dumps(progress)])
        )
        if not res:
            return True
        flag, status, attempts = res
        if attempt is not None and (_s(status) != "running" or _s(attempts) != str(attempt)):
            return True
        return _s(flag) == "1"

    def stage_artifacts(
        self, job_id: str, attempt: int | str, artifacts: Iterable[tuple[str, bytes]]
    ) -> None:
        key = self.keys.staging(job_id, attempt)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(key)
        for name, data in artifacts:
            pipe.hset(key, name, data)
        pipe.expire(key, self.ttl)
        pipe.execute()

    def finish(
        self,
        job_id: str,
        attempt: int | str,
        status: str,
        fields: Mapping[str, Any],
        *,
        kind: str | None = None,
        duration: float | None = None,
    ) -> bool:
        """End attempt ``attempt`` with ``status``; on success its staged artifacts become the
        job's artifacts in the same step. False when the attempt is no longer current."""
        k = self.keys
        ok = self._finish(
            keys=[
                k.job(job_id),
                k.current,
                k.total,
                k.staging(job_id, attempt),
                k.artifacts(job_id),
                k.running,
                k.uploads(job_id),
            ],
            args=[str(attempt), status, self.ttl, repr(time.time()), *_flatten(fields)],
        )
        if ok and kind is not None and duration is not None:
            count_duration(self.r, k, kind, duration, self.ttl)
        return bool(ok)

    def artifact(self, job_id: str, name: str) -> dict[str, Any] | None:
        """The published pointer of artifact ``name`` (``{key, media_type, size, etag}``)."""
        data = cast(bytes | None, self.r.hget(self.keys.artifacts(job_id), name))
        return json.loads(data) if data else None

    def artifact_pointers(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Every published artifact of the job: name -> pointer."""
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.keys.artifacts(job_id)))
        return {_s(k) or "": json.loads(v) for k, v in raw.items()}

    def images(
        self,
        job_id: str,
        uploads: Iterable[str],
        refs: Iterable[tuple[str, str]],
        read: Callable[[dict[str, Any]], bytes] | None = None,
    ) -> dict[str, bytes]:
        """The input images of a classify/screen job: its ``uploads`` by name, and artifacts of
        other jobs keyed ``job/artifact`` (``refs`` as ``(job, artifact)``; ``read`` turns a
        published pointer into the bytes, from the artifact store). ``ValueError`` naming what
        is gone (expired)."""
        ups, rs = list(uploads), list(refs)
        pipe = self.r.pipeline(transaction=False)
        for name in ups:
            pipe.hget(self.keys.uploads(job_id), name)
        for ref_job, art in rs:
            pipe.hget(self.keys.artifacts(ref_job), art)
        values = cast(list[bytes | None], pipe.execute())
        names = ups + [f"{j}/{a}" for j, a in rs]
        missing = [n for n, v in zip(names, values, strict=True) if v is None]
        if missing:
            raise ValueError(f"input image(s) gone from Redis (expired?): {', '.join(missing)}")
        out = {n: cast(bytes, v) for n, v in zip(names, values, strict=True)}
        if read is not None:
            for ref_job, art in rs:
                out[f"{ref_job}/{art}"] = read(json.loads(out[f"{ref_job}/{art}"]))
        return out

    def artifact_names(self, job_id: str) -> list[str]:
        return sorted(
            _s(n) or "" for n in cast(list[bytes], self.r.hkeys(self.keys.artifacts(job_id)))
        )

    def staging_keys(self, job_id: str) -> list[str]:
        pattern = f"{self.keys.job(job_id)}:staging:*"
        return [_s(k) or "" for k in self.r.scan_iter(match=pattern)]

    def publish_catalog(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        if not entries:
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.catalog, mapping={n: json.dumps(e) for n, e in entries.items()})
        pipe.expire(self.keys.catalog, self.ttl)
        pipe.execute()

    def heartbeat(self, name: str, info: Mapping[str, Any], ttl: float) -> None:
        self.r.set(self.keys.worker(name), json.dumps(info), px=int(ttl * 1000))
        self.r.expire(self.keys.catalog, self.ttl)

    def drop_worker(self, name: str) -> None:
        self.r.delete(self.keys.worker(name))

    def running_jobs(self) -> dict[str, str]:
        """Job id -> the worker running it, for every running job."""
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.keys.running))
        return {_s(j) or "": _s(w) or "" for j, w in raw.items()}

    def live_workers(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` whose heartbeat key exists."""
        ns = list(names)
        if not ns:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for n in ns:
            pipe.exists(self.keys.worker(n))
        return {n for n, e in zip(ns, pipe.execute(), strict=True) if e}

    def lost_jobs(self, running: Mapping[str, str]) -> set[str]:
        """Those of ``running`` (job id -> its worker) whose process is gone: the worker stopped
        beating, or its heartbeat no longer lists the pool process that ran the job."""
        jobs = sorted(running)
        if not jobs:
            return set()
        keys = [self.keys.job(j) for j in jobs]
        args = [self.keys.worker_prefix, *(running[j] for j in jobs)]
        lost = cast(list[int], self._lost(keys=keys, args=args))
        return {jobs[int(i) - 1] for i in lost}

    def reap(self, job_id: str, worker: str, queue: str, message: str) -> tuple[str, int]:
        """Claim job ``job_id`` of the lost ``worker`` (or of its dead pool process): requeue it
        (``message`` pushed to the broker list ``queue`` in the same step) or cancel it if
        cancel was asked. Returns ``(verdict, attempts so far)``; see ``_REAP``."""
        k = self.keys
        res = cast(
            list[Any],
            self._reap(
                keys=[k.job(job_id), k.current, k.total, k.running, queue],
                args=[job_id, worker, repr(time.time()), self.ttl, k.worker_prefix, message],
            ),
        )
        return _s(res[0]) or "", int(_s(res[1]) or 0)
