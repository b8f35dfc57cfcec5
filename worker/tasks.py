"""Thin Celery tasks: read the job, run its kind's runner with a progress callback, store results.

One task, ``tivis.run_job(job_id)``, runs every kind: the job's kind and spec live in its Redis
record (the API wrote them), so messages stay tiny and the record is the one truth. Each attempt
counts in the record; artifacts are staged per attempt and become the job's artifacts in the
same atomic step that marks it succeeded, so a job redelivered after a lost worker ends with
exactly one set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, cast

import redis
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

from core.artifacts import (
    ArtifactStoreError,
    attempt_key,
    store_from_settings,
    sweep_job,
    write_all,
)
from core.queue import RUN_JOB_TASK
from core.settings import get_settings
from core.store import JobStore
from core.webhooks import Emitter, webhook_of
from specs.classify import ArtifactRef, ClassifySpec, ScreenSpec
from specs.kinds import KINDS
from worker.celery_app import app, worker_name
from worker.jobs import RUNNERS, JobContext  # torch, imported before the pool forks: warm children
from worker.jobs.base import model_versions, use_determinism

log = logging.getLogger("tivis.worker")


class JobCanceled(Exception):
    """Raised from the progress callback when the job's cancel flag is set, or its attempt was
    superseded (the reaper requeued the job: this worker had stopped beating)."""


class _State:
    """Per-process state: settings, the store, the model registry (models cached once loaded)."""

    def __init__(self) -> None:
        from worker.engine.models import Registry
        from worker.engine.optimize import Runtime

        self.settings = get_settings()
        s = self.settings
        self.store = JobStore(redis.Redis.from_url(s.redis_url), s.key_prefix, s.ttl_seconds)
        self.hooks = Emitter(self.store.r, s.key_prefix, s.ttl_seconds)
        self.registry = Registry(s.models_dir, s.weights_dir, s.torch_home, s.model_store)
        self.runtime = Runtime(
            amp=s.amp,
            channels_last=s.channels_last,
            compile=s.compile,
            pass_memory_mb=s.pass_memory_mb,
            memory_fraction=s.pass_memory_fraction,
        )
        self.artifacts = store_from_settings(s)
        self.pid = os.getpid()
        use_determinism(s.deterministic, s.device)


_state: _State | None = None


def reset_state() -> None:
    global _state
    _state = None


def state() -> _State:
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _State()
    return _state


class _Progress:
    """The engine's progress callback: writes a few times a second (throttled), checks the cancel
    flag on each write, and remembers the last values it was called with, written or not, for
    the final record."""

    def __init__(
        self, st: _State, job_id: str, attempt: int, rec: dict[str, Any] | None = None
    ) -> None:
        self.st = st
        self.rec = rec  # for progress webhooks (None: the job wants none)
        self.hooked = -1e9
        self.hooks_sent = 0
        self.job_id = job_id
        self.attempt = attempt
        self.every = st.settings.cancel_check_seconds
        self.written = 0.0
        self.last: dict[str, Any] = {}

    def __call__(self, rnd: int, rounds: int, step: int, q: float) -> None:
        pct = round(100.0 * min(rnd, rounds) / max(rounds, 1), 1)
        self.last = {"round": rnd, "rounds": rounds, "step": step, "q_c": q, "percent": pct,
                     "attempt": self.attempt}  # fmt: skip
        now = time.monotonic()
        if now - self.written < self.every:
            return
        self.written = now
        if self.st.store.progress(self.job_id, self.last, self.attempt):
            raise JobCanceled(self.job_id)
        if self.rec is not None and now - self.hooked >= self.st.settings.webhook_progress_seconds:
            self.hooked, self.hooks_sent = now, self.hooks_sent + 1
            name = f"progress.{self.attempt}.{self.hooks_sent}"
            rec = {**self.rec, "progress": self.last}
            self.st.hooks.safe_emit(self.job_id, "progress", name=name, rec=rec)

    def final(self) -> dict[str, Any]:
        """The last round, rounds, step and q_C seen, at 100 percent."""
        return {**self.last, "percent": 100.0, "attempt": self.attempt}


def _images(st: _State, job_id: str, spec: BaseModel) -> dict[str, bytes]:
    """The input images a classify/screen spec names, keyed as ``specs.classify.image_key``."""
    if isinstance(spec, ClassifySpec):
        refs = list(spec.images)
    elif isinstance(spec, ScreenSpec):
        refs = [spec.image] if spec.image is not None else []
    else:
        raise TypeError(f"{type(spec).__name__} takes no images")
    uploads = [r for r in refs if isinstance(r, str)]
    others = [(r.job, r.artifact) for r in refs if isinstance(r, ArtifactRef)]
    return st.store.images(job_id, uploads, others, read=lambda p: st.artifacts.get(p["key"]))


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def clean_up(st: _State, job_id: str, token: str, *, published: bool) -> None:
    """After an attempt ended: if it was the job's current one, delete every file of the job
    that no published pointer names (earlier, lost attempts); if it was superseded, delete its
    own files. Best effort: what stays behind goes with the TTL cleanup."""
    try:
        if published:
            keep = [p["key"] for p in st.store.artifact_pointers(job_id).values()]
            sweep_job(st.artifacts, job_id, keep)
        else:
            own = [o.key for o in st.artifacts.list(attempt_key(job_id, token, ""))]
            st.artifacts.delete(own)
    except Exception:
        log.exception("artifact cleanup failed", extra={"job_id": job_id})


@app.task(name=RUN_JOB_TASK)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> str:
    """Run one attempt of job ``job_id``; returns its final status (or why it did not run)."""
    st = state()
    verdict, info = st.store.start(job_id, st.settings.max_attempts, worker_name(), os.getpid())
    ctx = {"job_id": job_id}
    if verdict != "run":
        log.info("job not run", extra={**ctx, "verdict": verdict, "info": info})
        if verdict in ("canceled", "exhausted"):
            st.hooks.safe_emit(job_id, "canceled" if verdict == "canceled" else "failed")
        return verdict
    attempt = int(info)
    ctx["attempt"] = str(attempt)
    rec = st.store.get(job_id)
    assert rec is not None
    kind = str(rec["kind"])
    t0 = time.monotonic()
    log.info("job started", extra={**ctx, "kind": kind})

    hook = webhook_of(rec)
    wants_progress = hook is not None and "progress" in hook.get("events", ())
    progress = _Progress(st, job_id, attempt, rec if wants_progress else None)

    def finish(status: str, fields: dict[str, Any]) -> str:
        took = time.monotonic() - t0
        ok = st.store.finish(job_id, attempt, status, fields, kind=kind, duration=took)
        clean_up(st, job_id, f"a{attempt}", published=ok)
        log.info(
            "job finished" if ok else "job finished, attempt superseded",
            extra={**ctx, "kind": kind, "status": status, "seconds": round(took, 3)},
        )
        if ok and hook is not None:
            st.hooks.safe_emit(job_id, status)
        return status

    try:
        run, kdef = RUNNERS.get(kind), KINDS.get(kind)
        if run is None or kdef is None:
            raise ValueError(f"this worker cannot run jobs of kind {kind!r}")
        spec = kdef.spec.model_validate(rec["spec"])
        if kdef.fanout:  # an atlas: its chunks run as tasks of their own and end the job
            from worker.atlas_tasks import fan_out

            return fan_out(st, job_id, cast(Any, spec), rec)
        jctx = JobContext(
            st.registry,
            device=st.settings.device,
            runtime=st.runtime,
            progress=progress,
            images=_images(st, job_id, spec) if kdef.images else (),
            max_pixels=st.settings.max_upload_pixels,
        )
        versions = model_versions(st.registry, spec)  # what the names mean as the job starts
        out = run(spec, jctx)
        out.result.setdefault("model_versions", versions)
    except JobCanceled:
        return finish("canceled", {})
    except SoftTimeLimitExceeded:
        err = {"type": "TimeLimitExceeded",
               "message": f"the job ran longer than {st.settings.soft_time_limit} s"}  # fmt: skip
        return finish("failed", {"error": err})
    except Exception as exc:
        log.exception("job failed", extra={**ctx, "kind": kind})
        return finish("failed", {"error": _error(exc)})
    try:  # files first, under this attempt's prefix; published with the status below
        files = [(a.name, a.data, a.media_type) for a in out.artifacts]
        ptrs = write_all(st.artifacts, job_id, f"a{attempt}", files)
    except ArtifactStoreError as exc:
        log.exception("artifact store failed", extra={**ctx, "kind": kind})
        return finish("failed", {"error": _error(exc)})
    st.store.stage_artifacts(
        job_id, attempt, ((n, json.dumps(p).encode()) for n, p in ptrs.items())
    )
    listing = [
        {"name": a.name, "media_type": a.media_type, "size": len(a.data)} for a in out.artifacts
    ]
    done = progress.final()
    return finish("succeeded", {"result": out.result, "artifacts": listing, "progress": done})
