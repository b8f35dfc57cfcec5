"""Run the README's serve command itself, use it over HTTP, stop it with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from integration.harness import ROOT, free_port, wait_for

pytestmark = pytest.mark.integration


def serve_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1).strip().splitlines()[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_readme_serve_command_end_to_end(models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIVIS_")}
    env.update(
        TIVIS_PORT=str(port), TIVIS_DATA_DIR=str(tmp_path / "data"),
        TIVIS_MODELS_DIR=str(models_dir), TIVIS_DEVICE="cpu", TIVIS_KEY_PREFIX="e2e",
    )  # fmt: skip
    proc = subprocess.Popen(
        shlex.split(serve_command()), cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.daemon = True
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:

            def ready() -> bool:
                assert proc.poll() is None, "".join(lines[-50:])
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, 300, "the served API to be ready", 0.2)
            r = http.post("/visualize", json={
                "model": "tiny", "targets": ["soccer ball"], "method": "vanilla",
                "optimizer": {"max_total_steps": 30}})  # fmt: skip
            assert r.status_code == 202, r.text
            url = r.headers["location"]

            def done() -> dict | None:  # type: ignore[type-arg]
                job = http.get(url).json()
                return job if job["status"] in ("succeeded", "failed", "canceled") else None

            job = wait_for(done, 180, "the job", 0.1)
            assert job["status"] == "succeeded", job
            png = http.get(job["result"]["targets"][0]["urls"]["image"])
            assert png.headers["content-type"] == "image/png"
            assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
        pids = [
            rec["pid"]
            for rec in (json.loads(ln) for ln in list(lines) if ln.startswith("{"))
            if rec.get("logger") == "tivis.embedded" and rec.get("event") == "started"
        ]
        assert len(pids) == 4, "".join(lines[-50:])  # redis, worker, webhooks, api
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(60) == 0, "".join(lines[-50:])
        wait_for(lambda: not any(alive(p) for p in pids), 10, "all processes to exit")
        # the worker's pool children are gone too
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        assert str(tmp_path / "data") not in ps
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0)
