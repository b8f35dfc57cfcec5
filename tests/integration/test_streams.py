"""Connection limits (issue 9, defect 4) on a real uvicorn process and a real Redis server:
event streams past ``TIVIS_MAX_EVENT_STREAMS`` get 503 with ``Retry-After``, the open ones hold
no connection of the request pool (here 4), so submissions still answer 202; and a body that
does not arrive in time gets 408."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.harness import api_process, new_prefix, run_async, service_env

from core.store import JobStore

CATALOG = {"tiny": {"info": {"name": "tiny", "input_size": 64, "num_classes": 10},
                    "labels": [f"class {i}" for i in range(9)] + ["soccer ball"]}}  # fmt: skip
STREAMS = 12
EXTRA = 4
BODY = {"model": "tiny", "targets": ["soccer ball"]}


class Server:
    def __init__(self, url: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.port, self.proc, self.log = url, port, proc, log


@pytest.fixture
def server(redis_server: Any, tmp_path: Path) -> Iterator[Server]:
    prefix = new_prefix("streams")
    store = JobStore(redis_server.client(), prefix, 3600)
    store.publish_catalog(CATALOG)
    env = service_env(
        redis_server.url, prefix, None,
        TIVIS_MAX_EVENT_STREAMS=STREAMS, TIVIS_REDIS_MAX_CONNECTIONS=4,
        TIVIS_BODY_TIMEOUT_SECONDS=1, TIVIS_MAX_QUEUED_PER_KEY=0,
    )  # fmt: skip
    log = tmp_path / "api.log"
    try:
        with api_process(env, log, 60, interval=0.2) as (url, proc):
            yield Server(url, int(url.rsplit(":", 1)[1]), proc, log)
    finally:
        keys = list(store.r.scan_iter(match=f"{prefix}:*"))
        if keys:
            store.r.delete(*keys)


async def _streams_and_submissions(url: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=STREAMS + EXTRA + 8)
    timeout = httpx.Timeout(30.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as c:
        job_id = (await c.post("/visualize", json=BODY)).json()["id"]
        async with contextlib.AsyncExitStack() as stack:
            opened: list[httpx.Response] = []
            refused: list[httpx.Response] = []
            readers: list[Any] = []
            for _ in range(STREAMS + EXTRA):
                r = await stack.enter_async_context(c.stream("GET", f"/jobs/{job_id}/events"))
                if r.status_code == 200:
                    lines = r.aiter_lines()  # kept: a dropped iterator closes the stream
                    first = await anext(lines)  # the stream is really open
                    assert first == "event: status", first
                    opened.append(r)
                    readers.append(lines)
                else:
                    await r.aread()
                    refused.append(r)
            # every stream open: submissions still answer, and reads too
            submits = [await c.post("/visualize", json=BODY) for _ in range(20)]
            concurrent = await asyncio.gather(*(c.post("/visualize", json=BODY) for _ in range(8)))
            metrics = (await c.get("/metrics")).text
        # the streams are closed: their places come free
        again = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with c.stream("GET", f"/jobs/{job_id}/events") as r:
                again = r.status_code
            if again == 200:
                break
            await asyncio.sleep(0.2)
    return {"opened": opened, "refused": refused, "submits": submits + list(concurrent),
            "metrics": metrics, "again": again}  # fmt: skip


def test_streams_are_capped_and_never_starve_submissions(server: Server) -> None:
    out = run_async(_streams_and_submissions(server.url))
    assert len(out["opened"]) == STREAMS, server.log.read_text()[-3000:]
    assert len(out["refused"]) == EXTRA
    for r in out["refused"]:
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("application/problem+json")
        assert int(r.headers["retry-after"]) > 0
        body = json.loads(r.content)
        assert body["type"].endswith("/too-many-streams") and str(STREAMS) in body["detail"]
    assert [r.status_code for r in out["submits"]] == [202] * len(out["submits"])
    assert f"tivis_event_streams {float(STREAMS)}" in out["metrics"]
    assert out["again"] == 200
    assert "Traceback" not in server.log.read_text()


def test_a_slow_body_gets_408(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /visualize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"model": '
        )  # and then nothing more
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"application/problem+json" in answer
