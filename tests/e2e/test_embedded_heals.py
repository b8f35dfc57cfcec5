"""The embedded run heals (issue 9, defect 2): SIGKILL its Celery main process, its redis-server,
its API, and each comes back (Redis with its data), says so in its JSON log, and jobs go on.
``python -m app.embedded`` as a real subprocess tree; polling with deadlines, never sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.harness import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration
SLOW = float(os.environ.get("TIVIS_TEST_SLOWDOWN", "1"))
JOB = {"model": "tiny", "targets": ["soccer ball"], "method": "vanilla",
       "optimizer": {"max_total_steps": 30}}  # fmt: skip


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Run:
    """The embedded run's process and its JSON log lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.embedded"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        reader = threading.Thread(
            target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()

    def events(self, event: str, proc: str) -> list[dict[str, Any]]:
        out = []
        for ln in list(self.lines):
            if ln.startswith("{"):
                rec = json.loads(ln)
                if (rec.get("logger"), rec.get("event"), rec.get("proc")) == (
                    "tivis.embedded",
                    event,
                    proc,
                ):
                    out.append(rec)
        return out

    def pid(self, proc: str) -> int:
        return int(self.events("started", proc)[-1]["pid"])

    def tail(self) -> str:
        return "".join(self.lines[-60:])

    def restarted(self, proc: str, times: int, timeout: float = 60) -> int:
        """Until ``proc`` was started again (``times`` restarts in all); its new pid."""

        def started() -> int | None:
            assert self.proc.poll() is None, self.tail()
            evs = [e for e in self.events("started", proc) if e["restarts"] == times]
            return int(evs[0]["pid"]) if evs else None

        try:
            return wait_for(started, timeout * SLOW, f"{proc} to be restarted", 0.1)
        except TimeoutError:
            raise AssertionError(self.tail()) from None


def test_embedded_run_restarts_worker_redis_and_api(models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIVIS_")}
    env.update(
        TIVIS_PORT=str(port), TIVIS_DATA_DIR=str(tmp_path / "data"), TIVIS_API_WORKERS="1",
        TIVIS_MODELS_DIR=str(models_dir), TIVIS_DEVICE="cpu", TIVIS_KEY_PREFIX="heal",
        TIVIS_HEARTBEAT_SECONDS="1", TIVIS_RESTART_BACKOFF_SECONDS="0.2", PYTHONPATH=str(ROOT),
    )  # fmt: skip
    run = Run(env)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def get(url: str) -> httpx.Response | None:
        try:
            return http.get(url)
        except httpx.TransportError:
            return None

    def ready() -> bool:
        assert run.proc.poll() is None, run.tail()
        r = get("/readyz")
        return r is not None and r.status_code == 200

    def submit_and_finish(timeout: float = 180) -> str:
        r = wait_for(lambda: _post(http, "/visualize", JOB), 60 * SLOW, "a submission", 0.2)
        assert r.status_code == 202, r.text
        job_id = str(r.json()["id"])

        def done() -> dict[str, Any] | None:
            resp = get(f"/jobs/{job_id}")
            job = resp.json() if resp is not None and resp.status_code == 200 else {}
            return job if job.get("status") in ("succeeded", "failed", "canceled") else None

        try:
            job = wait_for(done, timeout * SLOW, f"job {job_id}", 0.1)
        except TimeoutError:
            raise AssertionError(run.tail()) from None
        assert job["status"] == "succeeded", job
        return job_id

    try:
        wait_for(ready, 300 * SLOW, "the embedded run to be ready", 0.2)
        first = submit_and_finish()

        # the Celery main process: a new worker comes up and runs the next job
        old_worker = run.pid("worker")
        os.kill(old_worker, signal.SIGKILL)
        new_worker = run.restarted("worker", 1)
        assert new_worker != old_worker
        assert run.events("process exited", "worker")[0]["code"] == -signal.SIGKILL
        submit_and_finish()

        # redis-server: restarted with its data; old jobs are still known, new ones run
        os.kill(run.pid("redis"), signal.SIGKILL)
        run.restarted("redis", 1)

        def known() -> dict[str, Any] | None:
            r = get(f"/jobs/{first}")
            return r.json() if r is not None and r.status_code == 200 else None

        job = wait_for(known, 60 * SLOW, "the API to read from the restarted Redis", 0.2)
        assert job["status"] == "succeeded"
        submit_and_finish()

        # the API
        os.kill(run.pid("api"), signal.SIGKILL)
        run.restarted("api", 1)
        wait_for(ready, 120 * SLOW, "the restarted API", 0.2)
        assert get(f"/jobs/{first}").status_code == 200  # type: ignore[union-attr]

        # every restart was logged, with its backoff
        for proc in ("worker", "redis", "api"):
            assert run.events("restarting", proc), proc
            assert run.events("process exited", proc)[0]["restart_in_s"] > 0
        pids = [int(e["pid"]) for p in ("redis", "worker", "api") for e in run.events("started", p)]
        os.killpg(run.proc.pid, signal.SIGINT)
        assert run.proc.wait(60) == 0, run.tail()
        wait_for(lambda: not any(alive(p) for p in pids), 20, "all processes to exit")
    finally:
        http.close()
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(30)


def _post(http: httpx.Client, url: str, body: dict[str, Any]) -> httpx.Response | None:
    """A submission, or None while the service cannot take it yet (restarting)."""
    try:
        r = http.post(url, json=body)
    except httpx.TransportError:
        return None
    return r if r.status_code == 202 else None
