"""The whole job path with nothing mocked: a real Redis server, real Celery worker processes,
the real app (in process), the real engine. Polling with deadlines, never sleeps."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import Worker, new_prefix, service_env, wait_for
from PIL import Image

from app.main import create_app
from core.artifacts import store_from_settings
from core.settings import Settings
from core.store import JobStore

pytestmark = pytest.mark.integration
SLOW = float(os.environ.get("TIVIS_TEST_SLOWDOWN", "1"))  # scale deadlines on slow machines


class Service:
    def __init__(self, client: TestClient, store: JobStore, workers: list[Worker]) -> None:
        self.c = client
        self.store = store
        self.workers = workers

    def submit(self, body: dict[str, Any], path: str = "/visualize") -> str:
        r = self.c.post(path, json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.c.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(done, timeout * SLOW, f"job {job_id} to reach {statuses}", 0.05)
        except TimeoutError:
            logs = "\n".join(w.log() for w in self.workers)
            raise AssertionError(f"{self.job(job_id)}\nworker logs:\n{logs}") from None

    def png(self, url: str) -> Image.Image:
        r = self.c.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        img = Image.open(io.BytesIO(r.content))
        img.load()
        return img


def start_service(
    redis_server: Any, tmp: Path, models_dir: Path, **env: Any
) -> tuple[Settings, JobStore, dict[str, str]]:
    prefix = new_prefix("svc")
    env.setdefault("TIVIS_ARTIFACTS_URL", str(tmp / "artifacts"))
    environ = service_env(redis_server.url, prefix, models_dir, **env)
    settings = Settings(
        redis_url=redis_server.url, key_prefix=prefix, artifacts_url=env["TIVIS_ARTIFACTS_URL"]
    )
    store = JobStore(redis_server.client(), prefix, settings.ttl_seconds)
    return settings, store, environ


@contextmanager
def running_service(redis_server: Any, models_dir: Path, tmp: Path) -> Iterator[Service]:
    """The app in process over its own key prefix, with one real worker subprocess."""
    settings, store, env = start_service(redis_server, tmp, models_dir)
    worker = Worker(env, tmp / "worker.log")
    try:
        worker.wait_ready(store.r, settings.key_prefix, timeout=180 * SLOW)
        with TestClient(create_app(settings)) as client:
            yield Service(client, store, [worker])
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def service(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(redis_server, models_dir, tmp_path_factory.mktemp("svc")) as svc:
        yield svc


QUICK = {  # a short tiny-model job: 8 rounds of at most 40 steps
    "model": "tiny",
    "schedule": [{"op": "rotate", "value": 45, "repeat": 8}],
    "optimizer": {"max_steps_per_round": 40},
}
LONG = {  # a tiny-model job that runs for a long while (q_target is out of reach)
    "model": "tiny",
    "targets": ["soccer ball"],
    "optimizer": {"q_target": 0.999999, "max_steps_per_round": 5000, "max_total_steps": 100000},
}


def test_ready_and_catalog_published_by_worker(service: Service) -> None:
    assert service.c.get("/readyz").status_code == 200
    names = {m["name"] for m in service.c.get("/models").json()["items"]}
    assert {"tiny", "efficientnet_lite0"} <= names
    classes = service.c.get("/models/efficientnet_lite0/classes", params={"q": "soccer"}).json()
    assert classes["items"][0]["label"] == "soccer ball"


def test_visualize_tiny_progress_rises_and_pngs_decode(service: Service) -> None:
    size = service.c.get("/models/tiny").json()["input_size"]
    job_id = service.submit({**QUICK, "targets": ["soccer ball", 3]})
    seen: list[float] = []

    def finished() -> dict[str, Any] | None:
        job = service.job(job_id)
        if job["progress"] and job["status"] == "running":
            seen.append(job["progress"]["percent"])
        return job if job["status"] in {"succeeded", "failed"} else None

    job = wait_for(finished, 180 * SLOW, "the tiny visualization", 0.02)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1 and job["progress"]["percent"] == 100.0
    assert seen and seen == sorted(seen), seen  # progress only rises
    assert len(job["result"]["targets"]) == 2
    for entry in job["result"]["targets"]:
        assert len(entry["top5"]) == 5 and entry["tests"]
        for role in ("image", "inverted"):
            img = service.png(entry["urls"][role])
            assert img.size == (size, size) and img.mode == "RGB"
        report = service.c.get(entry["urls"]["report"]).json()
        assert report["target"] == entry["target"]
    first = job["result"]["targets"][0]
    assert first["target"]["label"] == "soccer ball" and first["target"]["index"] == 9
    names = {a["name"] for a in job["artifacts"]}
    assert names == set(service.store.artifact_names(job_id)) and len(names) == 6
    metrics = service.c.get("/metrics").text
    assert 'tivis_jobs_total{kind="visualize",status="succeeded"}' in metrics


def test_sweep_tiny_has_27_levels(service: Service) -> None:
    body = {"model": "tiny", "target": "soccer ball",
            "schedule": [{"op": "rotate", "value": 90, "repeat": 2}],
            "optimizer": {"max_steps_per_round": 15}}  # fmt: skip
    job_id = service.submit(body, "/entropy-sweep")
    job = service.wait_status(job_id, {"succeeded", "failed"}, 300)
    assert job["status"] == "succeeded", job["error"]
    sweep = service.c.get(f"/jobs/{job_id}/artifacts/sweep.json").json()
    assert len(sweep["levels"]) == 27
    assert [lv["gray"] for lv in sweep["levels"]] == [*range(0, 251, 10), 255]
    assert sweep["best_initial_gray"] in [lv["gray"] for lv in sweep["levels"]]
    for key in ("gray_change_signed", "gray_change_abs", "entropy2d", "second_order_total"):
        assert all(isinstance(lv[key], float) for lv in sweep["levels"])
    for name in ("row-a-results.png", "row-d-second-order.png", "second-order-total.png"):
        service.png(f"/jobs/{job_id}/artifacts/{name}")
    assert job["result"]["levels"][0]["image_url"].endswith("level-000.png")


def test_cancel_running_job(service: Service) -> None:
    job_id = service.submit(LONG)
    wait_for(lambda: service.job(job_id)["progress"], 120 * SLOW, "the long job to run", 0.05)
    r = service.c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202
    job = service.wait_status(job_id, {"canceled", "succeeded", "failed"}, 10)
    assert job["status"] == "canceled" and job["artifacts"] == []
    assert service.store.artifact_names(job_id) == []
    assert service.c.post(f"/jobs/{job_id}/cancel").status_code == 409
    # the worker is free again
    nxt = service.submit({"model": "tiny", "targets": [1], "method": "vanilla",
                          "optimizer": {"max_total_steps": 20}})  # fmt: skip
    assert service.wait_status(nxt, {"succeeded", "failed"}, 120)["status"] == "succeeded"


def test_cancel_queued_job_never_starts(service: Service) -> None:
    blocker = service.submit(LONG)
    queued = service.submit({"model": "tiny", "targets": [2]})
    wait_for(lambda: service.job(blocker)["progress"], 120 * SLOW, "the blocker to run", 0.05)
    r = service.c.post(f"/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    service.c.post(f"/jobs/{blocker}/cancel")
    service.wait_status(blocker, {"canceled"}, 10)
    # the worker takes the canceled message and drops it without running it
    marker = service.submit({"model": "tiny", "targets": [1], "method": "vanilla",
                             "optimizer": {"max_total_steps": 5}})  # fmt: skip
    service.wait_status(marker, {"succeeded"}, 120)
    job = service.job(queued)
    assert job["status"] == "canceled" and job["attempts"] == 0 and job["started_at"] is None


def test_events_stream_progress_then_end(service: Service) -> None:
    job_id = service.submit({**QUICK, "targets": [4]})
    events: list[tuple[str, Any]] = []
    with service.c.stream("GET", f"/jobs/{job_id}/events") as s:
        kind = ""
        for line in s.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end"
    assert "progress" in kinds
    assert events[-1][1]["status"] == "succeeded"


@pytest.mark.slow
def test_visualize_default_model_soccer_ball(service: Service) -> None:
    job_id = service.submit({"model": "efficientnet_lite0", "targets": ["soccer ball"]})
    job = service.wait_status(job_id, {"succeeded", "failed"}, 480)
    assert job["status"] == "succeeded", job["error"]
    entry = job["result"]["targets"][0]
    assert entry["target"] == {"index": 805, "label": "soccer ball", "requested": "soccer ball"}
    assert entry["top5"][0]["label"] == "soccer ball"
    assert service.png(entry["urls"]["image"]).size == (224, 224)
    assert service.png(entry["urls"]["inverted"]).size == (224, 224)


def test_sigkill_worker_mid_job_then_new_worker_finishes_it(
    redis_server: Any, models_dir: Path, tmp_path: Path
) -> None:
    # the new worker's reaper requeues the job within seconds; the broker's redelivery of the
    # old message (after the visibility timeout) is then skipped; no time limit in the way here
    limits = {"TIVIS_SOFT_TIME_LIMIT": 600, "TIVIS_HARD_TIME_LIMIT": 610,
              "TIVIS_VISIBILITY_TIMEOUT": 620}  # fmt: skip
    settings, store, env = start_service(redis_server, tmp_path, models_dir, **limits)
    first = Worker(env, tmp_path / "w1.log")
    second: Worker | None = None
    try:
        first.wait_ready(store.r, settings.key_prefix, timeout=180 * SLOW)
        with TestClient(create_app(settings)) as client:
            svc = Service(client, store, [first])
            body = {**QUICK, "targets": ["soccer ball", 2]}
            job_id = svc.submit(body)
            wait_for(lambda: svc.job(job_id)["progress"], 120 * SLOW, "attempt 1 to run", 0.01)
            first.kill()
            job = svc.job(job_id)
            assert job["status"] == "running" and job["attempts"] == 1
            second = Worker(env, tmp_path / "w2.log")
            svc.workers.append(second)
            job = svc.wait_status(job_id, {"succeeded", "failed"}, 180)
            assert job["status"] == "succeeded", job["error"]
            assert job["attempts"] == 2
            names = [a["name"] for a in job["artifacts"]]
            assert len(names) == len(set(names)) == 6
            assert store.artifact_names(job_id) == sorted(names)
            assert store.staging_keys(job_id) == []
            files = store_from_settings(settings).list(f"{job_id}/")  # one set, attempt 2's
            assert sorted(o.key for o in files) == sorted(f"{job_id}/a2/{n}" for n in names)
            for a in job["artifacts"]:
                if a["media_type"] == "image/png":
                    svc.png(a["url"])
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_time_limit_marks_the_job_failed_and_the_worker_goes_on(
    redis_server: Any, models_dir: Path, tmp_path: Path
) -> None:
    limits = {"TIVIS_SOFT_TIME_LIMIT": 4, "TIVIS_HARD_TIME_LIMIT": 600}
    settings, store, env = start_service(redis_server, tmp_path, models_dir, **limits)
    worker = Worker(env, tmp_path / "w.log")
    try:
        worker.wait_ready(store.r, settings.key_prefix, timeout=180 * SLOW)
        with TestClient(create_app(settings)) as client:
            svc = Service(client, store, [worker])
            job_id = svc.submit(LONG)
            job = svc.wait_status(job_id, {"succeeded", "failed", "canceled"}, 180 * SLOW)
            assert job["status"] == "failed" and job["error"]["type"] == "TimeLimitExceeded"
            assert job["attempts"] == 1 and job["artifacts"] == []
            # the pool process is replaced and takes the next job
            nxt = svc.submit({"model": "tiny", "targets": [1], "method": "vanilla",
                              "optimizer": {"max_total_steps": 5}})  # fmt: skip
            done = svc.wait_status(nxt, {"succeeded", "failed"}, 180 * SLOW)
            assert done["status"] == "succeeded"
    finally:
        worker.stop()
