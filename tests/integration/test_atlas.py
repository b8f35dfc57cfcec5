"""Atlas jobs through the real service: a real Redis server, TWO real Celery worker processes, a
directory artifact store, the app in process, the tiny model. Polling with deadlines (scaled by
TIVIS_TEST_SLOWDOWN), never sleeps as synchronization."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import Worker, new_prefix, service_env, wait_for
from PIL import Image

from app.main import create_app
from core.artifacts import DirectoryStore
from core.chunks import ChunkStore
from core.queue import queue_key
from core.settings import Settings
from core.store import JobStore

pytestmark = pytest.mark.integration
SLOW = float(os.environ.get("TIVIS_TEST_SLOWDOWN", "1"))

# ten classes of the tiny model in chunks of two; every class runs all its steps (q_target out
# of reach), so a chunk lasts long enough to be seen running on a fast machine too
ATLAS: dict[str, Any] = {
    "model": "tiny",
    "method": "vanilla",
    "chunk_size": 2,
    "optimizer": {"max_steps_per_round": 40, "q_target": 0.999999},
    "views": {"count": 2},
}


class Pair:
    """The app over one key prefix, with two workers and a directory store."""

    def __init__(
        self, client: TestClient, settings: Settings, workers: list[Worker], tmp: Path, r: Any
    ) -> None:
        self.c = client
        self.settings = settings
        self.workers = workers
        self.store = JobStore(r, settings.key_prefix, settings.ttl_seconds)
        self.chunks = ChunkStore(r, settings.key_prefix, settings.ttl_seconds)
        self.files = DirectoryStore(tmp / "artifacts")

    def submit(self, **over: Any) -> str:
        r = self.c.post("/atlas", json={**ATLAS, **over})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def atlas(self, job_id: str) -> dict[str, Any]:
        r = self.c.get(f"/atlas/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)

    def wait(self, job_id: str, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            a = self.atlas(job_id)
            return a if pred(a) else None

        try:
            return wait_for(check, timeout * SLOW, what, 0.05)
        except TimeoutError:
            raise AssertionError(f"{what}: {self.atlas(job_id)}\n{self.logs()}") from None

    def wait_end(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        ended = {"succeeded", "failed", "canceled"}
        return self.wait(job_id, lambda a: a["status"] in ended, timeout, "the atlas to end")

    def queue_drained(self) -> bool:
        r = self.store.r
        unacked = f"{self.settings.key_prefix}:broker:unacked"
        return int(r.llen(queue_key(self.settings))) == 0 and int(r.hlen(unacked)) == 0

    def chunk_starts(self, job_id: str) -> int:
        raw = self.store.r.hvals(self.store.keys.chunk_attempts(job_id))
        return sum(int(v) for v in raw)


@pytest.fixture(scope="module")
def pair(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("atlas-svc")
    prefix = new_prefix("atlas")
    # a chunk takes about a second on an idle machine and half a minute on a loaded 2-core one;
    # the visibility timeout is also how long a killed worker's chunk waits to come back
    limits = {"TIVIS_SOFT_TIME_LIMIT": 90, "TIVIS_HARD_TIME_LIMIT": 100,
              "TIVIS_VISIBILITY_TIMEOUT": 105}  # fmt: skip
    arts = str(tmp / "artifacts")
    env = service_env(redis_server.url, prefix, models_dir, TIVIS_ARTIFACTS_URL=arts,
                      OMP_NUM_THREADS="1", **limits)  # fmt: skip
    settings = Settings(redis_url=redis_server.url, key_prefix=prefix, artifacts_url=arts)
    workers = [Worker(env, tmp / f"w{i}.log") for i in (1, 2)]
    client_redis = redis_server.client()
    try:
        for w in workers:
            w.wait_ready(client_redis, prefix, timeout=240 * SLOW)
        with TestClient(create_app(settings)) as client:
            yield Pair(client, settings, workers, tmp, client_redis)
    finally:
        for w in workers:
            w.stop()


def png(pair: Pair, url: str) -> Image.Image:
    r = pair.c.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img


def assert_one_set(pair: Pair, job_id: str, classes: int) -> dict[str, Any]:
    """Exactly one image, inversion and report per class, in class order, and nothing else in
    the store than what the job publishes (no staging left behind)."""
    atlas = pair.atlas(job_id)
    idx = [e["index"] for e in atlas["entries"]]
    assert idx == sorted(set(idx)) and len(idx) == classes, idx
    keys = sorted(o.key for o in pair.files.list(f"{job_id}/"))
    published = sorted(p["key"] for p in pair.store.artifact_pointers(job_id).values())
    assert keys == published
    assert len([k for k in keys if k.endswith("-image.png")]) == classes
    assert len(keys) == 3 * classes + (2 if atlas["status"] == "succeeded" else 0)
    return atlas


def test_atlas_spreads_over_both_workers_and_is_readable_while_it_runs(pair: Pair) -> None:
    job_id = pair.submit(classes="0-9")
    partial = pair.wait(job_id, lambda a: a["status"] == "running" and 0 < a["done"] < 10, 300,
                        "a partial atlas")  # fmt: skip
    first = partial["entries"][0]
    assert png(pair, first["urls"]["image"]).size == (64, 64)  # readable before the end
    assert pair.c.get(first["urls"]["report"]).json()["target"]["index"] == first["index"]
    assert len(partial["pending"]) == 10 - partial["done"]
    assert 0 < partial["progress"]["classes_done"] < 10
    atlas = pair.wait_end(job_id)
    assert atlas["status"] == "succeeded", (atlas["error"], pair.logs())
    assert_one_set(pair, job_id, 10)
    workers = {c["worker"] for c in pair.chunks.done_chunks(job_id).values()}
    assert len(workers) == 2, workers  # both workers ran chunks
    job = pair.c.get(f"/jobs/{job_id}").json()
    assert job["progress"]["classes_done"] == 10 and job["progress"]["percent"] == 100.0
    index = pair.c.get(job["result"]["index_url"]).json()
    assert [e["index"] for e in index["entries"]] == list(range(10))
    sheet = png(pair, job["result"]["contact_sheet_url"])
    assert sheet.size[0] >= 64 * 4


def test_cancel_stops_every_chunk(pair: Pair) -> None:
    job_id = pair.submit(classes="0-9", chunk_size=1)
    pair.wait(job_id, lambda a: a["done"] >= 1, 300, "a first chunk")
    r = pair.c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code in (200, 202), r.text
    atlas = pair.wait_end(job_id, 120)
    assert atlas["status"] == "canceled"
    done = atlas["done"]
    assert 1 <= done < 10
    wait_for(pair.queue_drained, 120 * SLOW, "the rest of the chunks to be dropped", 0.1)
    assert pair.atlas(job_id)["done"] == done  # nothing published after the cancel
    assert pair.chunk_starts(job_id) < 10 + 2  # queued chunks never ran


def test_sigkill_of_a_worker_mid_chunk_costs_only_its_chunk(pair: Pair) -> None:
    job_id = pair.submit(classes="0-9")

    def both_busy(a: dict[str, Any]) -> bool:  # two chunks started and not yet published
        return a["status"] == "running" and pair.chunk_starts(job_id) - a["done"] // 2 >= 2

    pair.wait(job_id, both_busy, 300, "both workers in a chunk")
    victim = pair.workers[0]
    victim.kill()
    atlas = pair.wait_end(job_id, 300)  # its chunk comes back after the visibility timeout
    assert atlas["status"] == "succeeded", (atlas["error"], pair.logs())
    assert_one_set(pair, job_id, 10)
    attempts = [int(v) for v in pair.store.r.hvals(pair.store.keys.chunk_attempts(job_id))]
    assert max(attempts) == 2 and len(attempts) == 5  # the killed chunk ran again, only it
    runs = pair.chunks.done_chunks(job_id)
    assert sorted(runs) == [0, 1, 2, 3, 4]
    assert json.dumps(atlas["entries"])  # readable, JSON-ready
