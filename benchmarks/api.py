"""Load figures of a running tivis service on loopback, printed as JSON.

1. Queue overhead of a trivial job: submit -> succeeded as the client sees it (polling every
   2 ms), minus the job's own run time (its record's finished_at - started_at); also the
   server-side part (created -> started) from the record.
2. Sustained ``POST /visualize`` rate and latency percentiles with N concurrent keep-alive
   connections (a minimal asyncio HTTP/1.1 client, so the load generator stays light), then a
   check that every accepted job has a record ("nothing lost"); the jobs are then canceled so
   the worker drops them unrun.
3. With ``--streams N``: N Server-Sent Event streams (``GET /jobs/<id>/events`` on queued jobs)
   held open beside the submit load (a stream whose job ends is reopened on another), counting
   how many were open while it ran, their answers (200, 503 past the per-process cap, any 5xx)
   and the events they got.

    python benchmarks/api.py [--url http://127.0.0.1:8000] [--requests 5000] [--concurrency 16]
                             [--streams 300] [--out benchmarks/results/api-streams.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class Conn:
    """One keep-alive HTTP/1.1 connection; enough HTTP for JSON requests and answers."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.r: asyncio.StreamReader
        self.w: asyncio.StreamWriter

    async def open(self) -> Conn:
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.w.write(head.encode() + body)
        status_line = await self.r.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, await self.r.readexactly(length)

    def close(self) -> None:
        self.w.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def queue_overhead(c: Conn, model: str, target: Any, n: int) -> dict[str, Any]:
    body = json.dumps({"model": model, "targets": [target], "method": "vanilla",
                       "optimizer": {"max_total_steps": 1}}).encode()  # fmt: skip
    overheads, runs = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        status, raw = await c.request("POST", "/visualize", body)
        assert status == 202, raw
        job_id = json.loads(raw)["id"]
        while True:
            _, raw = await c.request("GET", f"/jobs/{job_id}")
            job = json.loads(raw)
            if job["status"] in ("succeeded", "failed", "canceled"):
                break
            await asyncio.sleep(0.002)
        t1 = time.perf_counter()
        assert job["status"] == "succeeded", job
        run = job["duration_s"]
        runs.append(run)
        overheads.append((t1 - t0) - run)
    return {
        "jobs": n,
        "run_time_ms_median": round(1000 * statistics.median(runs), 2),
        "overhead_ms_median": round(1000 * statistics.median(overheads), 2),
        "overhead_ms_p90": round(1000 * pct(overheads, 90), 2),
        "overhead_ms_max": round(1000 * max(overheads), 2),
        "aim_ms": 30,
        "note": "submit->succeeded seen by a client polling every 2 ms, minus the job's run time",
    }


async def submit_rate(
    host: str, port: int, headers: dict[str, str], model: str, target: Any, total: int,
    concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    body = json.dumps({"model": model, "targets": [target]}).encode()
    conns = [await Conn(host, port, headers).open() for _ in range(concurrency)]
    latencies: list[float] = []
    ids: list[str] = []
    errors: dict[int, int] = {}
    counter = iter(range(total))

    async def run(c: Conn) -> None:
        for _ in counter:
            t = time.perf_counter()
            status, raw = await c.request("POST", "/visualize", body)
            latencies.append(time.perf_counter() - t)
            if status == 202:
                ids.append(json.loads(raw)["id"])
            else:
                errors[status] = errors.get(status, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(run(c) for c in conns))
    took = time.perf_counter() - t0
    # nothing lost: every accepted job has a record; then cancel them (the worker skips them)
    missing = 0
    chunks = [ids[i::concurrency] for i in range(concurrency)]

    async def check(c: Conn, part: list[str]) -> None:
        nonlocal missing
        for job_id in part:
            status, _ = await c.request("GET", f"/jobs/{job_id}")
            missing += status != 200
            await c.request("POST", f"/jobs/{job_id}/cancel")

    await asyncio.gather(*(check(c, p) for c, p in zip(conns, chunks, strict=True)))
    for c in conns:
        c.close()
    return {
        "requests": total,
        "concurrency": concurrency,
        "accepted": len(ids),
        "errors": errors,
        "seconds": round(took, 3),
        "rate_per_s": round(total / took, 1),
        "latency_ms_p50": round(1000 * pct(latencies, 50), 2),
        "latency_ms_p99": round(1000 * pct(latencies, 99), 2),
        "latency_ms_max": round(1000 * max(latencies), 2),
        "unique_ids": len(set(ids)),
        "accepted_without_record": missing,
        "aim": {"rate_per_s": 1000, "latency_ms_p99": 50, "accepted_without_record": 0},
    }


@dataclass
class StreamStats:
    """What the held streams saw."""

    open: int = 0
    opened: int = 0
    answers: dict[int, int] = field(default_factory=dict)
    events: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)


async def hold_stream(
    host: str, port: int, headers: dict[str, str], job_ids: list[str], st: StreamStats,
    stop: asyncio.Event,
) -> None:  # fmt: skip
    """Keep one event stream open until ``stop``; reopen it (on another job) when it ends."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    while not stop.is_set():
        r, w = await asyncio.open_connection(host, port)
        st.writers.add(w)
        counted = False
        try:
            job_id = random.choice(job_ids)
            w.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            status = int((await r.readline()).split()[1])
            st.answers[status] = st.answers.get(status, 0) + 1
            if status != 200:
                await asyncio.sleep(1.0)
                continue
            st.open += 1
            st.opened += 1
            counted = True
            while not stop.is_set():
                line = await r.readline()
                if not line:
                    break
                if line.startswith(b"event: "):
                    st.events += 1
                    if line.startswith((b"event: end", b"event: error")):
                        break
        except (OSError, ValueError, IndexError):
            pass
        finally:
            if counted:
                st.open -= 1
            st.writers.discard(w)
            w.close()


async def with_streams(
    host: str, port: int, headers: dict[str, str], model: str, target: Any, streams: int,
    total: int, concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    """``submit_rate`` while ``streams`` event streams are held open."""
    body = json.dumps({"model": model, "targets": [target]}).encode()
    c = await Conn(host, port, headers).open()
    job_ids = []
    for _ in range(min(streams, 50)):
        status, raw = await c.request("POST", "/visualize", body)
        assert status == 202, raw
        job_ids.append(json.loads(raw)["id"])
    st = StreamStats()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(hold_stream(host, port, headers, job_ids, st, stop))
        for _ in range(streams)
    ]
    deadline = time.monotonic() + 60
    while st.open < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    open_before = st.open
    samples: list[int] = []

    async def sample() -> None:
        while not stop.is_set():
            samples.append(st.open)
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    load_before = os.getloadavg()
    submit = await submit_rate(host, port, headers, model, target, total, concurrency)
    load_after = os.getloadavg()
    stop.set()
    await sampler
    for w in list(st.writers):
        w.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    c.close()  # idle past the server's keep-alive while the load ran: a fresh one
    c = await Conn(host, port, headers).open()
    for job_id in job_ids:
        await c.request("POST", f"/jobs/{job_id}/cancel")
    c.close()
    server_errors = sum(n for code, n in st.answers.items() if code >= 500 and code != 503)
    server_errors += sum(n for code, n in submit["errors"].items() if int(code) >= 500)
    return {
        "streams_wanted": streams,
        "streams_open_before_load": open_before,
        "streams_open_min_during_load": min(samples) if samples else open_before,
        "streams_open_max_during_load": max(samples) if samples else open_before,
        "stream_answers": st.answers,
        "stream_events": st.events,
        "server_errors_5xx": server_errors,
        "submit": submit,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--overhead-jobs", type=int, default=20)
    ap.add_argument("--model", default=None, help="default: tiny if published, else the first")
    ap.add_argument("--streams", type=int, default=0, help="event streams held beside the load")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    u = urlsplit(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    c = await Conn(host, port, headers).open()
    _, raw = await c.request("GET", "/models")
    models = [m["name"] for m in json.loads(raw)["items"]]
    model = args.model or ("tiny" if "tiny" in models else models[0])
    target = 0
    out: dict[str, Any] = {"url": args.url, "model": model}
    out["queue_overhead"] = await queue_overhead(c, model, target, args.overhead_jobs)
    c.close()
    if args.streams:
        out["with_streams"] = await with_streams(
            host, port, headers, model, target, args.streams, args.requests, args.concurrency
        )
    else:
        out["submit"] = await submit_rate(
            host, port, headers, model, target, args.requests, args.concurrency
        )
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
