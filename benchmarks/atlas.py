"""Atlas throughput and Redis memory per finished visualization; prints JSON, writes it too.

1. **Classes per minute** of an atlas (``POST /atlas``, default method ``invariant+``) through
   the real service: a private redis-server, N real Celery worker processes, a directory
   artifact store, the app in process. Measured from submit to ``succeeded``, once with one
   worker and once with two (workers are started and ready before the clock starts).
2. **Redis memory per finished visualization**: one real visualize job (``run_visualize``,
   one target) stored the way the service stores it, ``MEMORY USAGE`` summed over the job's
   keys: before this change (artifact bytes in the ``P:job:<id>:artifacts`` hash) and after
   (bytes in the artifact store, a small JSON pointer per artifact in Redis).

    python benchmarks/atlas.py --classes 100 --json benchmarks/results/atlas-cpu2.json

The load average is recorded before and after each run; on a shared machine the figures say as
much about the neighbours as about the code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _job_memory(r: Any, keys: list[str]) -> int:
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in keys if r.exists(k))


def _create(url: str, prefix: str, job_id: str, spec: dict[str, Any]) -> None:
    """Create a queued visualize record the way the API does (its async store)."""
    import asyncio

    import redis.asyncio as aredis

    from core.store import AsyncJobStore

    async def run() -> None:
        client = aredis.Redis.from_url(url)
        try:
            await AsyncJobStore(client, prefix, 3600).create(job_id, "visualize", spec)
        finally:
            await client.aclose()

    asyncio.run(run())


def redis_memory(server: Any, model: str, tmp: Path) -> dict[str, Any]:
    """MEMORY USAGE of a finished one-target visualize job, before and after."""
    from core.artifacts import DirectoryStore, write_all
    from core.store import JobStore
    from specs import VisualizeSpec
    from worker.engine.models import Registry
    from worker.jobs import JobContext
    from worker.jobs.visualize import run_visualize

    spec = VisualizeSpec(model=model, targets=["soccer ball"], method="invariant+")
    out = run_visualize(spec, JobContext(Registry(), device="cpu"))
    listing = [{"name": a.name, "media_type": a.media_type, "size": len(a.data)}
               for a in out.artifacts]  # fmt: skip
    r = server.client()
    res: dict[str, Any] = {
        "artifacts": listing,
        "artifact_bytes": sum(len(a.data) for a in out.artifacts),
    }
    files = DirectoryStore(tmp / "mem-artifacts")
    for layout in ("before", "after"):
        store = JobStore(r, f"bench-mem-{layout}", 3600)
        job_id = f"job-{layout}"
        _create(server.url, store.keys.prefix, job_id, spec.model_dump(mode="json"))
        store.start(job_id, 3)
        if layout == "before":  # main before issue 10: the bytes in the hash
            staged = [(a.name, a.data) for a in out.artifacts]
        else:
            ptrs = write_all(files, job_id, "a1",
                             [(a.name, a.data, a.media_type) for a in out.artifacts])  # fmt: skip
            staged = [(n, json.dumps(p).encode()) for n, p in ptrs.items()]
        store.stage_artifacts(job_id, 1, staged)
        store.finish(job_id, 1, "succeeded", {"result": out.result, "artifacts": listing})
        keys = [store.keys.job(job_id), store.keys.artifacts(job_id)]
        res[layout] = {
            "record_bytes": _job_memory(r, keys[:1]),
            "artifacts_hash_bytes": _job_memory(r, keys[1:]),
            "total_bytes": _job_memory(r, keys),
        }
    res["ratio_before_over_after"] = round(
        res["before"]["total_bytes"] / max(1, res["after"]["total_bytes"]), 1
    )
    return res


def atlas_run(server: Any, workers: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient
    from integration.harness import Worker, new_prefix, service_env, wait_for

    from app.main import create_app
    from core.chunks import ChunkStore
    from core.settings import Settings

    prefix = new_prefix(f"bench{workers}")
    arts = str(tmp / f"artifacts-{workers}")
    env = service_env(server.url, prefix, None, TIVIS_ARTIFACTS_URL=arts,
                      OMP_NUM_THREADS=str(args.threads))  # fmt: skip
    settings = Settings(redis_url=server.url, key_prefix=prefix, artifacts_url=arts)
    procs = [Worker(env, tmp / f"w{workers}-{i}.log") for i in range(workers)]
    r = server.client()
    try:
        for w in procs:
            w.wait_ready(r, prefix, timeout=600)
        body = {"model": args.model, "classes": f"0-{args.classes - 1}",
                "chunk_size": args.chunk_size}  # fmt: skip
        with TestClient(create_app(settings)) as c:
            load0 = os.getloadavg()
            t0 = time.monotonic()
            job_id = c.post("/atlas", json=body).json()["id"]

            def ended() -> dict[str, Any] | None:
                job = c.get(f"/jobs/{job_id}").json()
                return job if job["status"] in ("succeeded", "failed", "canceled") else None

            job = wait_for(ended, args.timeout, "the atlas", interval=0.5)
            took = time.monotonic() - t0
            load1 = os.getloadavg()
        chunks = ChunkStore(r, prefix, 3600).done_chunks(job_id)
        per_worker: dict[str, int] = {}
        for ch in chunks.values():
            per_worker[ch["worker"]] = per_worker.get(ch["worker"], 0) + len(ch["classes"])
        return {
            "workers": workers,
            "status": job["status"],
            "classes": args.classes,
            "seconds": round(took, 1),
            "classes_per_minute": round(60.0 * args.classes / took, 2),
            "classes_per_worker": sorted(per_worker.values()),
            "load_before": [round(x, 2) for x in load0],
            "load_after": [round(x, 2) for x in load1],
        }
    finally:
        for w in procs:
            w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--chunk-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per worker")
    ap.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/atlas-cpu2.json")
    args = ap.parse_args()

    from integration.harness import RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="tivis-bench-atlas-"))
    server = RedisServer(tmp / "redis")
    out: dict[str, Any] = {
        "benchmark": "atlas",
        "machine": f"{os.cpu_count()} CPUs, shared with other engineers' jobs (see load)",
        "model": args.model,
        "method": "invariant+ (the atlas default)",
        "chunk_size": args.chunk_size,
        "omp_threads_per_worker": args.threads,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        if not args.skip_memory:
            out["redis_memory_per_visualization"] = redis_memory(server, args.model, tmp)
            print(json.dumps(out["redis_memory_per_visualization"], indent=1), flush=True)
        runs = []
        for n in [int(x) for x in args.workers.split(",") if x.strip()]:
            runs.append(atlas_run(server, n, args, tmp))
            print(json.dumps(runs[-1]), flush=True)
            out["runs"] = runs
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1) + "\n")
        if len(runs) >= 2:
            out["speedup_2_over_1"] = round(
                runs[1]["classes_per_minute"] / max(1e-9, runs[0]["classes_per_minute"]), 2
            )
    finally:
        server.stop()
    out["load_end"] = [round(x, 2) for x in os.getloadavg()]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
