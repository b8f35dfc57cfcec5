"""Webhooks through the whole service: a real Redis, a real job worker, a real webhook worker
(``app.commands.WEBHOOK_ARGS``, its own queue), the real app, and a real HTTP receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import ROOT, Worker, wait_for
from integration.test_service import LONG, QUICK, SLOW, Service, start_service
from photos import photo
from receiver import Receiver

from app.commands import WEBHOOK_ARGS
from app.main import create_app
from core import webhooks

pytestmark = pytest.mark.integration
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TIMEOUT = 8.0  # seconds a delivery waits for its receiver
HOOK_ENV = {
    "TIVIS_WEBHOOK_SECRET": SECRET,
    "TIVIS_WEBHOOK_ALLOW_PRIVATE": "true",
    "TIVIS_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
    "TIVIS_WEBHOOK_TIMEOUT": str(TIMEOUT),
    "TIVIS_WEBHOOK_POLL_SECONDS": "0.1",
    "TIVIS_WEBHOOK_PROGRESS_SECONDS": "0.2",
}


class HookWorker:
    """The webhook worker as the embedded run starts it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *WEBHOOK_ARGS], cwd=ROOT, env=env,
            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook worker exited:\n{self.log()}")
            return "webhook worker ready" in self.log_path.read_text(errors="replace")

        wait_for(ready, timeout, "the webhook worker", 0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture(scope="module")
def hooked(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("hooks")
    settings, store, env = start_service(redis_server, tmp, models_dir, **HOOK_ENV)
    settings = settings.model_copy(update={"webhook_secret": SECRET,
                                           "webhook_allow_private": True})  # fmt: skip
    worker = Worker(env, tmp / "worker.log")
    hooks = HookWorker(env, tmp / "webhooks.log")
    try:
        hooks.wait_ready(120 * SLOW)
        worker.wait_ready(store.r, settings.key_prefix, timeout=180 * SLOW)
        with TestClient(create_app(settings)) as client:
            svc = Service(client, store, [worker])
            svc.hooks = hooks  # type: ignore[attr-defined]
            yield svc
    finally:
        hooks.stop()
        worker.stop()


def _events(rx: Receiver) -> list[str]:
    return [json.loads(b)["type"] for b in rx.bodies()]


def _delivery(svc: Service, job_id: str, event: str) -> dict[str, Any] | None:
    for d in svc.job(job_id).get("webhook", {}).get("deliveries", []):
        if d["event"] == event:
            return dict(d)
    return None


def test_signed_deliveries_of_progress_and_success(hooked: Service) -> None:
    with Receiver() as rx:
        hook = {"url": rx.url, "events": ["progress", "succeeded"]}
        job_id = hooked.submit({**QUICK, "targets": ["soccer ball"], "webhook": hook})
        job = hooked.wait_status(job_id, {"succeeded", "failed"}, 180)
        assert job["status"] == "succeeded", job
        wait_for(lambda: "job.succeeded" in _events(rx), 60 * SLOW, "the succeeded delivery")
        got = rx.snapshot()
    types = [json.loads(g.body)["type"] for g in got]
    # deliveries are concurrent (threads), so a progress one may arrive after the end one
    assert types.count("job.succeeded") == 1
    assert "job.progress" in types  # at least the first progress write is announced
    for g in got:
        assert g.path == "/hook"
        assert webhooks.verify(SECRET, g.headers, g.body)  # the documented receiver check
        assert g.headers["content-type"] == "application/json"
        assert g.headers["webhook-id"].startswith(f"msg_{job_id}_")
    end = got[types.index("job.succeeded")]
    last = json.loads(end.body)
    assert last["data"]["id"] == job_id and last["data"]["status"] == "succeeded"
    assert last["data"]["url"] == f"/jobs/{job_id}"
    assert end.headers["webhook-id"] == f"msg_{job_id}_succeeded"
    view = hooked.job(job_id)["webhook"]
    assert view["url"] == rx.url and view["events"] == ["progress", "succeeded"]
    done = _delivery(hooked, job_id, "succeeded")
    assert done is not None and done["status"] == "delivered" and done["attempts"] == 1
    assert done["last_status"] == 200 and done["id"] == f"msg_{job_id}_succeeded"


def test_a_receiver_failing_twice_gets_the_third_delivery(hooked: Service) -> None:
    with Receiver([500, 500]) as rx:
        job_id = hooked.submit({**QUICK, "targets": [1], "webhook": {"url": rx.url}})
        wait_for(lambda: len(rx.snapshot()) >= 3, 120 * SLOW, "three delivery attempts")
        got = rx.snapshot()
        d = wait_for(
            lambda: (x := _delivery(hooked, job_id, "succeeded")) and x["status"] == "delivered"
            and x, 30 * SLOW, "the delivery log")  # fmt: skip
    assert len(got) == 3
    assert {g.headers["webhook-id"] for g in got} == {f"msg_{job_id}_succeeded"}
    assert len({g.body for g in got}) == 1
    assert all(webhooks.verify(SECRET, g.headers, g.body) for g in got)
    assert d["attempts"] == 3 and d["last_status"] == 200


def test_a_receiver_that_never_answers_does_not_slow_the_job(hooked: Service) -> None:
    """While a delivery hangs (for up to TIMEOUT s), the job goes on: it finishes, or its
    progress keeps changing, before that delivery could have timed out. A job that sent its own
    webhooks would freeze for TIMEOUT s at its first progress event."""
    spec = {**LONG, "targets": [2], "optimizer": {**LONG["optimizer"], "max_total_steps": 150}}
    with Receiver(default="hang") as rx:
        hook = {"url": rx.url, "events": ["progress", "succeeded"]}
        job_id = hooked.submit({**spec, "webhook": hook})
        first = wait_for(lambda: rx.snapshot(), 60 * SLOW, "a first (hanging) delivery")[0]
        seen: set[str] = set()
        finished = False
        while time.time() < first.at + TIMEOUT - 1.0:
            rec = hooked.store.get(job_id)
            assert rec is not None
            if rec["status"] == "succeeded":
                finished = True
                break
            seen.add(json.dumps(rec["progress"], sort_keys=True))
            time.sleep(0.05)
        assert finished or len(seen) >= 3, seen
        assert len(rx.snapshot()) >= 1  # and the receiver still holds its first request open
        job = hooked.wait_status(job_id, {"succeeded", "failed"}, 180)
        assert job["status"] == "succeeded", job
        # the succeeded delivery times out, and is retried
        d = wait_for(
            lambda: (x := _delivery(hooked, job_id, "succeeded")) and x["attempts"] >= 1 and x,
            90 * SLOW, "a timed-out attempt")  # fmt: skip
        assert d["status"] in ("retrying", "failed") and "timed out" in d["last_error"]
        assert d["last_status"] is None


def test_a_queued_job_canceled_by_the_api_announces_it(hooked: Service) -> None:
    with Receiver() as rx:
        blocker = hooked.submit(LONG)
        hooked.wait_status(blocker, {"running"}, 60)
        queued = hooked.submit({**QUICK, "targets": [3],
                                "webhook": {"url": rx.url, "events": ["canceled"]}})  # fmt: skip
        assert hooked.c.post(f"/jobs/{queued}/cancel").status_code == 200
        hooked.c.post(f"/jobs/{blocker}/cancel")
        wait_for(lambda: "job.canceled" in _events(rx), 60 * SLOW, "the canceled delivery")
        hooked.wait_status(blocker, {"canceled"}, 30)
    (body,) = [json.loads(b) for b in rx.bodies()]
    assert body["data"]["id"] == queued and body["data"]["status"] == "canceled"


def test_refused_receivers_are_a_422_at_submission(hooked: Service) -> None:
    settings = hooked.c.app.state.services.settings  # type: ignore[attr-defined]
    strict = settings.model_copy(update={"webhook_allow_private": False})
    jobs_before = hooked.store.r.zcard(hooked.store.keys.index)
    with TestClient(create_app(strict)) as c:
        for url, says in (("http://127.0.0.1:9/h", "loopback"),
                          ("http://localhost:9/h", "loopback"),
                          ("http://169.254.169.254/latest", "link-local"),
                          ("http://[::ffff:10.0.0.1]/h", "private")):  # fmt: skip
            r = c.post("/visualize", json={**QUICK, "targets": [1], "webhook": {"url": url}})
            assert r.status_code == 422, r.text
            p = r.json()
            assert r.headers["content-type"].startswith("application/problem+json")
            assert p["errors"][0]["field"] == "webhook.url" and says in p["detail"], p
        # the same check for uploads (classify, multipart)
        spec = {"models": ["tiny"], "webhook": {"url": "http://10.0.0.1/h"}}
        r = c.post("/classify", files=[("images", ("cat.png", photo("chelsea.png"), "image/png"))],
                   data={"spec": json.dumps(spec)})  # fmt: skip
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook.url", r.text
        r = c.post("/visualize", json={**QUICK, "targets": [1], "webhook": {"url": "ftp://x/"}})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook.url"
    nosecret = settings.model_copy(update={"webhook_secret": ""})
    with TestClient(create_app(nosecret)) as c:
        r = c.post("/visualize", json={**QUICK, "targets": [1],
                                       "webhook": {"url": "http://127.0.0.1:9/h"}})  # fmt: skip
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "webhook"
    assert hooked.store.r.zcard(hooked.store.keys.index) == jobs_before  # none queued
