"""Atlas jobs over the whole worker pool: one task per chunk, sent by name.

``tivis.run_job`` starts an atlas like any job (an attempt of its record), then :func:`fan_out`
records the plan (``core.chunks``) and sends one ``tivis.run_chunk(job_id, i)`` per chunk not
yet published; it does not wait. Any worker runs any chunk (late acks: a chunk of a lost worker
is redelivered, and only that chunk runs again). A chunk writes its class files under its own
prefix (``<job>/c<i>-<attempt>-<tag>/``) and publishes them with its class entries in one Lua
step, once; a duplicate finds it published and does nothing. The worker that publishes the last
chunk writes ``index.json`` and ``contact-sheet.png`` and marks the atlas succeeded in the same
step that publishes them. A cancel stops running chunks at their next progress check and
queued ones before they start; one that lands after a chunk's last check is found when it
publishes, which then publishes nothing and ends the atlas canceled. A chunk that raised is
sent again (up to ``max_attempts`` starts), and finished chunks are never redone.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from core.artifacts import ArtifactStoreError, sweep_job, write_all
from core.chunks import ChunkStore
from specs.atlas import AtlasSpec, chunk_classes, chunk_count, resolve_classes
from worker.celery_app import app
from worker.jobs.atlas import atlas_index, contact_sheet, run_chunk
from worker.jobs.base import JobContext, resolve_device
from worker.tasks import JobCanceled, _error, _State, state

log = logging.getLogger("tivis.worker")

RUN_CHUNK_TASK = "tivis.run_chunk"

_chunk_stores: dict[int, ChunkStore] = {}


def chunk_store(st: _State) -> ChunkStore:
    cs = _chunk_stores.get(os.getpid())
    if cs is None:
        cs = ChunkStore(st.store.r, st.settings.key_prefix, st.settings.ttl_seconds)
        _chunk_stores.clear()
        _chunk_stores[os.getpid()] = cs
    return cs


def _classes(st: _State, rec: dict[str, Any], spec: AtlasSpec) -> list[int]:
    """The atlas's classes: resolved by the API at submit time, else here from the model."""
    raw = rec.get("atlas_classes")
    if raw:
        return [int(c) for c in json.loads(raw)]
    labels = st.registry.load(spec.model, resolve_device(st.settings.device)).info.labels
    classes, bad = resolve_classes(spec, labels)
    if bad:
        raise ValueError("; ".join(f"classes[{pos}]: {msg}" for pos, msg in bad))
    return classes


def send_chunk(st: _State, job_id: str, i: int) -> None:
    app.send_task(RUN_CHUNK_TASK, args=[job_id, i], queue=st.settings.queue)


def fan_out(st: _State, job_id: str, spec: AtlasSpec, rec: dict[str, Any]) -> str:
    """Plan the atlas and send a task for every chunk not yet published (a redelivered start
    sends only the missing ones). The job stays running; its chunks end it."""
    cs = chunk_store(st)
    classes = _classes(st, rec, spec)
    n = chunk_count(len(classes), spec.chunk_size)
    if not cs.plan(job_id, classes, n):
        return "superseded"
    done = cs.done_chunks(job_id)
    todo = [i for i in range(n) if i not in done]
    for i in todo:
        send_chunk(st, job_id, i)
    log.info("atlas fanned out", extra={"job_id": job_id, "chunks": n, "sent": len(todo)})
    if not todo:
        assemble(st, job_id, spec)
    return "running"


class _CancelCheck:
    """A chunk's progress callback: it reads the job's cancel flag every few tenths of a second
    (the job's progress is classes done, written when chunks publish)."""

    def __init__(self, st: _State, job_id: str) -> None:
        self.st, self.job_id = st, job_id
        self.every = st.settings.cancel_check_seconds
        self.checked = time.monotonic()

    def __call__(self, rnd: int, rounds: int, step: int, q: float) -> None:
        now = time.monotonic()
        if now - self.checked < self.every:
            return
        self.checked = now
        if chunk_store(self.st).cancel_requested(self.job_id):
            raise JobCanceled(self.job_id)


def _delete_own(st: _State, job_id: str, token: str) -> None:
    try:
        st.artifacts.delete(o.key for o in st.artifacts.list(f"{job_id}/{token}/"))
    except ArtifactStoreError:
        log.exception("artifact cleanup failed", extra={"job_id": job_id})


@app.task(name=RUN_CHUNK_TASK, bind=True)  # type: ignore[untyped-decorator]
def run_chunk_task(self: Any, job_id: str, i: int) -> str:
    """Run chunk ``i`` of atlas ``job_id`` unless it is published, canceled or the job ended."""
    st = state()
    cs = chunk_store(st)
    ctx: dict[str, Any] = {"job_id": job_id, "chunk": i}
    verdict, info = cs.start_chunk(job_id, i, st.settings.max_attempts)
    if verdict == "done":  # a duplicate or a redelivery after publishing: maybe assemble
        rec = st.store.get(job_id)
        if (
            rec
            and rec["status"] == "running"
            and len(cs.done_chunks(job_id)) == int(rec.get("chunks_total") or -1)
        ):
            assemble(st, job_id, AtlasSpec.model_validate(rec["spec"]))
        return "done"
    if verdict != "run":
        log.info("chunk not run", extra={**ctx, "verdict": verdict, "info": info})
        if verdict in ("canceled", "exhausted"):  # this start ended the atlas (as run_job's does)
            st.hooks.safe_emit(job_id, "canceled" if verdict == "canceled" else "failed")
        return verdict
    attempt = int(info)
    rec = st.store.get(job_id)
    assert rec is not None
    spec = AtlasSpec.model_validate(rec["spec"])
    mine = chunk_classes(json.loads(rec["atlas_classes"]), spec.chunk_size, i)
    token = f"c{i:04d}-{attempt}-{uuid.uuid4().hex[:6]}"
    worker = str(getattr(self.request, "hostname", None) or os.uname().nodename)
    t0 = time.monotonic()
    log.info("chunk started", extra={**ctx, "attempt": attempt, "classes": len(mine)})
    check = _CancelCheck(st, job_id)
    jctx = JobContext(st.registry, device=st.settings.device, runtime=st.runtime, progress=check)
    try:
        out = run_chunk(spec, mine, jctx)
        files = [(a.name, a.data, a.media_type) for a in out.artifacts]
        ptrs = write_all(st.artifacts, job_id, token, files)
    except JobCanceled:
        _end(st, cs, job_id, "canceled", {})
        log.info("chunk canceled", extra=ctx)
        return "canceled"
    except (Exception, SoftTimeLimitExceeded) as exc:
        log.exception("chunk failed", extra={**ctx, "attempt": attempt})
        _delete_own(st, job_id, token)
        if attempt < st.settings.max_attempts:
            send_chunk(st, job_id, i)  # a retry of this chunk only; published ones stay
            return "retry"
        err = _error(exc)
        err["message"] = f"chunk {i} (classes {mine[0]}-{mine[-1]}) failed: {err['message']}"
        _end(st, cs, job_id, "failed", {"error": err})
        return "failed"
    entry = {"chunk": i, "classes": out.result["classes"], "worker": worker,
             "attempt": attempt, "seconds": round(time.monotonic() - t0, 3)}  # fmt: skip
    verdict, done, total = cs.publish_chunk(job_id, i, entry, ptrs)
    log.info(f"chunk {verdict}", extra={**ctx, "attempt": attempt, "done": done, "chunks": total})
    if verdict != "published":
        _delete_own(st, job_id, token)
        if verdict == "canceled":  # a cancel landed after the chunk's last check; this ended it
            st.hooks.safe_emit(job_id, "canceled")
        return verdict
    if done == total:
        assemble(st, job_id, spec)
    return "published"


def _end(
    st: _State,
    cs: ChunkStore,
    job_id: str,
    status: str,
    fields: dict[str, Any],
    pointers: dict[str, Any] | None = None,
) -> bool:
    """End the atlas with ``status`` and, if this call ended it, announce it to its webhook."""
    ok = cs.end(job_id, status, fields, pointers)
    if ok:
        st.hooks.safe_emit(job_id, status)
    return ok


def assemble(st: _State, job_id: str, spec: AtlasSpec) -> bool:
    """Write the index and the contact sheet and end the atlas ``succeeded`` in the step that
    publishes them; then delete every file of the job that nothing published names."""
    cs = chunk_store(st)
    rec = st.store.get(job_id)
    if rec is None or rec["status"] != "running":
        return False
    entries = cs.entries(job_id)
    total = int(rec.get("classes_total") or len(entries))
    token = f"final-{uuid.uuid4().hex[:8]}"
    try:
        ptrs = st.store.artifact_pointers(job_id)
        images = [(int(e["index"]), st.artifacts.get(ptrs[e["artifacts"]["image"]]["key"]))
                  for e in entries]  # fmt: skip
        index = atlas_index(spec, entries, total)
        files = [
            ("index.json", json.dumps(index, indent=1).encode(), "application/json"),
            ("contact-sheet.png", contact_sheet(images), "image/png"),
        ]
        final = write_all(st.artifacts, job_id, token, files)
    except (ArtifactStoreError, KeyError) as exc:
        log.exception("atlas assembly failed", extra={"job_id": job_id})
        _end(st, cs, job_id, "failed", {"error": _error(exc)})
        return False
    result = {k: v for k, v in index.items() if k not in ("entries", "spec")}
    result.update({"index": "index.json", "contact_sheet": "contact-sheet.png"})
    listing = [{"name": n, "media_type": m, "size": len(d)} for n, d, m in files]
    progress = dict(rec.get("progress") or {}, percent=100.0)
    fields = {"result": result, "artifacts": listing, "progress": progress}
    ok = _end(st, cs, job_id, "succeeded", fields, final)
    if ok:
        try:
            keep = [p["key"] for p in st.store.artifact_pointers(job_id).values()]
            sweep_job(st.artifacts, job_id, keep)
        except ArtifactStoreError:
            log.exception("artifact cleanup failed", extra={"job_id": job_id})
        log.info("atlas finished", extra={"job_id": job_id, "classes": total})
    else:
        _delete_own(st, job_id, token)
    return ok


@signals.task_failure.connect(sender=run_chunk_task)  # type: ignore[untyped-decorator]
def _chunk_task_failed(args: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """Safety net: a chunk task that died without handling it (a hard time limit kills its pool
    process, and Celery then acknowledges the message) is sent again, so the atlas does not
    wait forever; its next start counts against ``max_attempts``."""
    if not args or len(args) < 2:
        return
    job_id, i = str(args[0]), int(args[1])
    try:
        st = state()
        rec = st.store.get(job_id)
        if rec is not None and rec["status"] == "running":
            log.error("chunk task died; sent again", extra={"job_id": job_id, "chunk": i,
                                                            "error": repr(exception)})  # fmt: skip
            send_chunk(st, job_id, i)
    except Exception:
        log.exception("could not send a chunk again", extra={"job_id": job_id, "chunk": i})
