"""Webhook delivery figures, printed as JSON: a private redis-server, the real webhook worker
(``app.commands.WEBHOOK_ARGS``) and a local threaded receiver; N succeeded jobs each emit one
delivery (what the job worker does when a job ends), and we measure emit -> received.

1. ``fast``: the receiver answers 200 at once: deliveries per second and latency percentiles.
2. ``with_hanging``: the same while H other receivers never answer (each send waits for
   ``TIVIS_WEBHOOK_TIMEOUT``): what a slow receiver costs the others.

    PYTHONPATH=$PWD python benchmarks/webhooks.py [--jobs 200] [--hanging 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from integration.harness import RedisServer, new_prefix, service_env, wait_for  # noqa: E402
from receiver import Receiver  # noqa: E402

from app.commands import WEBHOOK_ARGS  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import JobStore  # noqa: E402
from core.webhooks import Emitter  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _jobs(store: JobStore, emitter: Emitter, urls: list[str], n: int) -> dict[str, float]:
    """Create ``n`` succeeded jobs round-robin over ``urls`` and emit their deliveries; returns
    job id -> emit time."""
    sent: dict[str, float] = {}
    for i in range(n):
        job_id = f"bench{i:05d}{time.time_ns()}"
        spec = {"targets": [1], "webhook": {"url": urls[i % len(urls)], "events": ["succeeded"]}}
        store.r.hset(store.keys.job(job_id), mapping={
            "id": job_id, "kind": "visualize", "status": "succeeded", "attempts": "0",
            "created_at": repr(time.time()), "spec": json.dumps(spec)})  # fmt: skip
        sent[job_id] = time.time()
        emitter.emit(job_id, "succeeded")
    return sent


def _latencies(rx: Receiver, sent: dict[str, float]) -> list[float]:
    out = []
    for r in rx.snapshot():
        job_id = json.loads(r.body)["data"]["id"]
        if job_id in sent:
            out.append(r.at - sent[job_id])
    return sorted(out)


def _figures(lat: list[float], n: int, took: float) -> dict[str, Any]:
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    return {"deliveries": n, "received": len(lat), "seconds": round(took, 2),
            "per_second": round(n / took, 1), "latency_ms": {
                "p50": round(1000 * q[49], 1), "p95": round(1000 * q[94], 1),
                "max": round(1000 * lat[-1], 1)}}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--hanging", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="tivis-whbench-"))
    redis_server = RedisServer(tmp / "redis")
    prefix = new_prefix("whbench")
    env = service_env(redis_server.url, prefix, None, TIVIS_WEBHOOK_SECRET=SECRET,
                      TIVIS_WEBHOOK_ALLOW_PRIVATE="true", TIVIS_WEBHOOK_POLL_SECONDS="0.1",
                      TIVIS_WEBHOOK_TIMEOUT=str(args.timeout),
                      TIVIS_WEBHOOK_RETRY_SCHEDULE="3600")  # fmt: skip
    log = open(tmp / "webhooks.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", *WEBHOOK_ARGS], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    threads = int(WEBHOOK_ARGS[WEBHOOK_ARGS.index("--concurrency") + 1])
    out: dict[str, Any] = {"poll_seconds": 0.1, "threads": threads, "timeout_s": args.timeout,
                           "per_host": Settings().webhook_per_host}  # fmt: skip
    try:
        wait_for(lambda: b"webhook worker ready" in (tmp / "webhooks.log").read_bytes(), 120,
                 "the webhook worker")  # fmt: skip
        store = JobStore(redis_server.client(), prefix, 3600)
        emitter = Emitter(store.r, prefix, 3600)
        with Receiver() as rx:
            t0 = time.time()
            sent = _jobs(store, emitter, [rx.url], args.jobs)
            wait_for(lambda: len(rx.snapshot()) >= args.jobs, 300, "every delivery", 0.02)
            out["fast"] = _figures(_latencies(rx, sent), args.jobs, time.time() - t0)
        hangs = [Receiver(default="hang").__enter__() for _ in range(args.hanging)]
        try:
            with Receiver() as rx:
                t0 = time.time()
                urls = [h.url for h in hangs] + [rx.url] * args.hanging
                sent = _jobs(store, emitter, urls, 2 * args.hanging * (args.jobs // 20 or 1))
                n_fast = len(sent) // 2
                wait_for(lambda: len(rx.snapshot()) >= n_fast, 600, "the fast receiver", 0.02)
                lat = _latencies(rx, sent)
                out["with_hanging"] = {"hanging_receivers": args.hanging,
                                       **_figures(lat, n_fast, time.time() - t0)}  # fmt: skip
        finally:
            for h in hangs:
                h.__exit__()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        redis_server.stop()
    out["load_before"] = [round(x, 2) for x in load0]
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    out["note"] = "shared 2-core VM, other engineers' tests running"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
