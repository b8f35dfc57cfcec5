"""Redis state of a job that runs in chunks over many workers (an atlas).

The job record (``core.store``) stays the one truth for status, cancel and progress; this module
adds its chunk bookkeeping, every step a Lua script so that concurrent workers agree:

- :meth:`ChunkStore.plan` (the task that started the job): how many classes and chunks;
- :meth:`ChunkStore.start_chunk`: counts a start of chunk ``i``; says ``done`` for a chunk
  already published (a redelivered or duplicate message does no work twice), ``canceled`` (and
  marks the job canceled) when a cancel was requested, ``exhausted`` (and fails the job) after
  too many starts;
- :meth:`ChunkStore.publish_chunk`: chunk ``i``'s class entries and artifact pointers become
  visible in one step, only once, and the progress (classes done / classes) moves with them; a
  cancel requested before then publishes nothing and ends the job ``canceled`` (a fanned-out job
  has no worker for the reaper to watch, so its chunks end it);
- :meth:`ChunkStore.end`: the job's final status, with the index and contact sheet pointers.

Keys: ``P:job:<id>:chunks`` (chunk -> JSON of its classes), ``P:job:<id>:chunk_attempts``,
and the job's ``P:job:<id>:artifacts`` pointers (name -> ``{key, media_type, size, etag}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis
import redis.asyncio as aredis

from core.store import _MOVE, Keys, _flatten, _s, count_duration, decode_record

# KEYS: record, chunks, running; ARGV: classes total, chunks total, classes JSON, job id.
# From here on no single worker holds the job (its chunks are redelivered on their own), so it
# leaves the reaper's running hash and names no worker.
_PLAN = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'classes_total', ARGV[1], 'chunks_total', ARGV[2],
           'atlas_classes', ARGV[3], 'worker', '')
redis.call('HDEL', KEYS[3], ARGV[4])
redis.call('HSETNX', KEYS[1], 'classes_done', '0')
local done = tonumber(redis.call('HGET', KEYS[1], 'classes_done'))
local total = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'progress', cjson.encode({classes_done = done, classes = total,
  chunks_done = redis.call('HLEN', KEYS[2]), chunks = tonumber(ARGV[2]),
  percent = math.floor(1000 * done / math.max(total, 1) + 0.5) / 10}))
return 1
"""

# KEYS: record, chunk attempts, chunks, current, total; ARGV: i, max attempts, now, ttl
_START_CHUNK = (
    _MOVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {'missing', ''} end
if s ~= 'running' then return {'finished', s} end
local kind = redis.call('HGET', KEYS[1], 'kind')
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[3])
  move(KEYS[4], KEYS[5], kind, s, 'canceled', ARGV[4])
  return {'canceled', s}
end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'done', ''} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
if n > tonumber(ARGV[2]) then
  local err = cjson.encode({type = 'TooManyAttempts', message = 'chunk ' .. ARGV[1] ..
    ' was started ' .. (n - 1) .. ' times without finishing (worker lost?)'})
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[3], 'error', err)
  move(KEYS[4], KEYS[5], kind, s, 'failed', ARGV[4])
  return {'exhausted', tostring(n - 1)}
end
return {'run', tostring(n)}
"""
)

# KEYS: record, chunks, artifacts, current, total; ARGV: i, entry JSON, classes in it, ttl, now,
# name/pointer pairs. Returns {1 published | 0 not | -1 canceled here, chunks done, chunks}:
# nothing is published once a cancel was requested, and the first chunk to find one ends the job.
_PUBLISH = (
    _MOVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
local nchunks = tonumber(redis.call('HGET', KEYS[1], 'chunks_total') or '0')
if s ~= 'running' then return {0, 0, nchunks} end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[5])
  move(KEYS[4], KEYS[5], redis.call('HGET', KEYS[1], 'kind'), s, 'canceled', ARGV[4])
  return {-1, 0, nchunks}
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {0, 0, nchunks} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[3], ARGV[4])
local done = redis.call('HINCRBY', KEYS[1], 'classes_done', tonumber(ARGV[3]))
local chunks = redis.call('HLEN', KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], 'classes_total') or '0')
redis.call('HSET', KEYS[1], 'progress', cjson.encode({classes_done = done, classes = total,
  chunks_done = chunks, chunks = nchunks,
  percent = math.floor(1000 * done / math.max(total, 1) + 0.5) / 10}))
return {1, chunks, nchunks}
"""
)

# KEYS: record, artifacts, current, total; ARGV: status, now, ttl, n, n field/value items,
# then name/pointer pairs
_END = (
    _MOVE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' then return 0 end
local last = 4 + tonumber(ARGV[4])
local fields = {'status', ARGV[1], 'finished_at', ARGV[2]}
for i = 5, last do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if #ARGV > last then
  for i = last + 1, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
move(KEYS[3], KEYS[4], redis.call('HGET', KEYS[1], 'kind'), s, ARGV[1], ARGV[3])
return 1
"""
)


def _entries(raw: Mapping[Any, Any]) -> list[dict[str, Any]]:
    """Every published class entry, in class order."""
    out: list[dict[str, Any]] = []
    for value in raw.values():
        out.extend(json.loads(value)["classes"])
    return sorted(out, key=lambda e: int(e["index"]))


class ChunkStore:
    """The worker's side of chunked jobs (synchronous)."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self.r = client
        self.keys = Keys(prefix)
        self.ttl = ttl
        self._plan = client.register_script(_PLAN)
        self._start = client.register_script(_START_CHUNK)
        self._publish = client.register_script(_PUBLISH)
        self._end = client.register_script(_END)

    def plan(self, job_id: str, classes: list[int], chunks: int) -> bool:
        """Record the job's classes and chunk count (its progress starts at what is done)."""
        k = self.keys
        res = self._plan(keys=[k.job(job_id), k.chunks(job_id), k.running],
                         args=[len(classes), chunks, json.dumps(classes), job_id])  # fmt: skip
        return bool(res)

    def start_chunk(self, job_id: str, i: int, max_attempts: int) -> tuple[str, str]:
        """``("run", attempt)`` or why not: done, canceled, finished, exhausted, missing. A start
        that ends the job (canceled, exhausted) counts its run time in the duration histogram."""
        k = self.keys
        now = time.time()
        res = cast(
            list[Any],
            self._start(
                keys=[k.job(job_id), k.chunk_attempts(job_id), k.chunks(job_id), k.current,
                      k.total],
                args=[i, max_attempts, repr(now), self.ttl],
            ),
        )  # fmt: skip
        verdict = _s(res[0]) or ""
        if verdict in ("canceled", "exhausted"):  # this start ended the job
            self._count_duration(job_id, now)
        return verdict, _s(res[1]) or ""

    def cancel_requested(self, job_id: str) -> bool:
        flag = cast(bytes | None, self.r.hget(self.keys.job(job_id), "cancel_requested"))
        return _s(flag) == "1"

    def attempts(self, job_id: str, i: int) -> int:
        return int(cast(bytes | None, self.r.hget(self.keys.chunk_attempts(job_id), i)) or 0)

    def publish_chunk(
        self,
        job_id: str,
        i: int,
        entry: Mapping[str, Any],
        pointers: Mapping[str, Mapping[str, Any]],
    ) -> tuple[str, int, int]:
        """Publish chunk ``i`` (its entry and its files' pointers) if the job still runs and the
        chunk was not published before: ``(verdict, chunks done, chunks in all)``. The verdict:
        ``published``; ``canceled`` (a cancel was requested: nothing published, and this call
        ended the job ``canceled``); ``superseded`` (the job ended or the chunk was published)."""
        k = self.keys
        pairs: list[str] = []
        for name, ptr in pointers.items():
            pairs += [name, json.dumps(ptr)]
        now = time.time()
        res = cast(
            list[Any],
            self._publish(
                keys=[k.job(job_id), k.chunks(job_id), k.artifacts(job_id), k.current, k.total],
                args=[i, json.dumps(entry), len(entry["classes"]), self.ttl, repr(now), *pairs],
            ),
        )
        verdict = {1: "published", -1: "canceled"}.get(int(res[0]), "superseded")
        if verdict == "canceled":
            self._count_duration(job_id, now)
        return verdict, int(res[1]), int(res[2])

    def entries(self, job_id: str) -> list[dict[str, Any]]:
        return _entries(cast(dict[bytes, bytes], self.r.hgetall(self.keys.chunks(job_id))))

    def done_chunks(self, job_id: str) -> dict[int, dict[str, Any]]:
        raw = cast(dict[bytes, bytes], self.r.hgetall(self.keys.chunks(job_id)))
        return {int(_s(k) or 0): json.loads(v) for k, v in raw.items()}

    def end(
        self,
        job_id: str,
        status: str,
        fields: Mapping[str, Any],
        pointers: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> bool:
        """End a running chunked job with ``status`` (and publish ``pointers`` with it); False
        if it had already ended. Counts its run time in the duration histogram."""
        k = self.keys
        flat = _flatten(fields)
        pairs: list[str] = []
        for name, ptr in (pointers or {}).items():
            pairs += [name, json.dumps(ptr)]
        now = time.time()
        ok = self._end(
            keys=[k.job(job_id), k.artifacts(job_id), k.current, k.total],
            args=[status, repr(now), self.ttl, len(flat), *flat, *pairs],
        )
        if ok:
            self._count_duration(job_id, now)
        return bool(ok)

    def _count_duration(self, job_id: str, now: float) -> None:
        """Count the run time of a job that just ended in its kind's duration histogram."""
        k = self.keys
        rec = self.r.hmget(k.job(job_id), "kind", "started_at")
        kind, started = _s(rec[0]) or "atlas", _s(rec[1])
        took = now - float(started) if started else 0.0
        count_duration(self.r, k, kind, took, self.ttl)


async def atlas_snapshot(
    client: aredis.Redis, prefix: str, job_id: str
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The API's side: the published entries and the job's record read in one transaction, so
    that the record's progress counts exactly the entries (a chunk publishes both at once)."""
    k = Keys(prefix)
    async with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(k.chunks(job_id))
        pipe.hgetall(k.job(job_id))
        raw, rec = await pipe.execute()
    return _entries(raw), decode_record(rec)
