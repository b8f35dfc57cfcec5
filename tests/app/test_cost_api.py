"""The cost limit at submission (issue 9, defect 1), against a real Redis server (no worker):
jobs over ``TIVIS_MAX_JOB_COST`` get a 422 naming the cost, the limit and what to reduce, and
queue nothing; accepted jobs echo their estimate; the README's examples pass."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import ROOT, new_prefix

from app.main import create_app
from core.queue import queue_key
from core.settings import Settings
from core.store import JobStore

LABELS = [f"class {i}" for i in range(1000)]
LABELS[805], LABELS[574] = "soccer ball", "golf ball"
SIZES = {"efficientnet_lite0": 224, "resnet50": 224, "vgg19": 224, "inception_v3": 299}
FOUR = list(SIZES)
HOSTILE: dict[str, Any] = {  # issue 9, defect 1
    "size": 512,
    "schedule": [{"op": "rotate", "value": 1.0, "repeat": 360}] * 64,
    "optimizer": {"max_steps_per_round": 5000, "max_total_steps": 100_000},
    "augment": {"views": 32},
}


class Api:
    def __init__(self, client: TestClient, store: JobStore, settings: Settings) -> None:
        self.c = client
        self.store = store
        self.settings = settings

    def nothing_queued(self) -> bool:
        jobs = int(self.store.r.zcard(self.store.keys.index))
        return jobs == 0 and int(self.store.r.llen(queue_key(self.settings))) == 0


def make_api(redis_server: Any, **overrides: Any) -> Iterator[Api]:
    prefix = new_prefix("cost")
    settings = Settings(redis_url=redis_server.url, key_prefix=prefix, **overrides)
    store = JobStore(redis_server.client(), prefix, settings.ttl_seconds)
    store.publish_catalog(
        {n: {"info": {"name": n, "input_size": s}, "labels": LABELS} for n, s in SIZES.items()}
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client, store, settings)
    keys = list(store.r.scan_iter(match=f"{prefix}:*"))
    if keys:
        store.r.delete(*keys)


@pytest.fixture
def api(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server)


def problem(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return dict(resp.json())


def test_hostile_visualize_is_refused_for_its_step_size(api: Api) -> None:
    body = {"model": FOUR, "targets": list(range(64)), **HOSTILE}
    p = problem(api.c.post("/visualize", json=body))
    assert [e["field"] for e in p["errors"]] == ["augment"]
    assert "views × size²" in p["errors"][0]["message"]
    assert api.nothing_queued()


def test_hostile_jobs_are_refused_naming_cost_limit_and_fields(api: Api) -> None:
    body = {"model": FOUR, "targets": list(range(64)), **HOSTILE, "augment": {"views": 4}}
    p = problem(api.c.post("/visualize", json=body))
    assert p["type"].endswith("/too-costly")
    assert p["limit"] == api.settings.max_job_cost
    assert p["cost"]["pixel_passes"] > 1000 * p["limit"]
    assert "TIVIS_MAX_JOB_COST" in p["detail"]
    assert f"{p['limit']:.3g}" in p["detail"] and f"{p['cost']['pixel_passes']:.3g}" in p["detail"]
    fields = [r["field"] for r in p["reduce"]]
    assert fields[0] == "targets" and p["reduce"][0]["count"] == 64
    assert {"model", "size", "optimizer.max_total_steps"} <= set(fields)
    assert [e["field"] for e in p["errors"]] == fields
    for field in ("targets", "model", "size"):
        assert field in p["detail"]

    sweep = {"model": "vgg19", "target": "soccer ball", "gray_levels": list(range(256)),
             **HOSTILE, "augment": {"views": 4}}  # fmt: skip
    p = problem(api.c.post("/entropy-sweep", json=sweep))
    assert p["type"].endswith("/too-costly") and p["reduce"][0]["field"] == "gray_levels"

    compare = {"models": FOUR, "targets": list(range(16)), **HOSTILE, "augment": {"views": 4}}
    p = problem(api.c.post("/compare", json=compare))
    assert p["type"].endswith("/too-costly")
    assert {"targets", "models", "size"} <= {r["field"] for r in p["reduce"]}
    assert api.nothing_queued()


def test_step_size_is_checked_with_the_models_input_size(api: Api) -> None:
    body = {"model": "inception_v3", "targets": [1], "augment": {"views": 12}}
    p = problem(api.c.post("/visualize", json=body))
    assert p["errors"][0]["field"] == "augment.views"
    assert "inception_v3" in p["errors"][0]["message"]
    assert api.nothing_queued()


def test_accepted_job_echoes_its_cost(api: Api) -> None:
    r = api.c.post(
        "/visualize", json={"targets": ["soccer ball"]}, headers={"Idempotency-Key": "a"}
    )
    assert r.status_code == 202, r.text
    cost = r.json()["cost"]
    assert cost["pixel_passes"] > 0 and cost["passes"] * 224 * 224 == cost["pixel_passes"]
    job = api.c.get(r.headers["Location"]).json()
    assert job["cost"] == cost
    again = api.c.post(
        "/visualize", json={"targets": ["soccer ball"]}, headers={"Idempotency-Key": "a"}
    )
    assert again.json()["cost"] == cost


def test_the_limit_is_configurable(redis_server: Any) -> None:
    for api in make_api(redis_server, max_job_cost=1_000_000):
        p = problem(api.c.post("/visualize", json={"targets": [1, 2]}))
        assert p["limit"] == 1_000_000
        assert p["reduce"][0]["field"] == "targets"
        assert api.nothing_queued()


def readme_bodies() -> list[tuple[str, dict[str, Any]]]:
    """The JSON bodies the README posts to /visualize and /entropy-sweep."""
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"localhost:8000(/visualize|/entropy-sweep)[^\n]*\n?[^\n]*?-d '(\{.*?\})'",
                       text)  # fmt: skip
    return [(path, json.loads(body)) for path, body in found]


def test_readme_examples_pass_the_default_limit(api: Api) -> None:
    bodies = readme_bodies()
    assert len(bodies) >= 4
    for path, body in bodies:
        r = api.c.post(path, json=body)
        assert r.status_code == 202, (path, body, r.text)
        assert r.json()["cost"]["pixel_passes"] <= api.settings.max_job_cost


def test_entropy_windows_are_checked_with_the_models_input_size(api: Api) -> None:
    """A window larger than the model's 224 px, a second window larger than the first map, or
    maps that would sort too much: 422 on ``entropy`` before anything is queued (the job used
    to fail after the whole optimization)."""
    for entropy, says in (
        ({"window": 128, "stride": 1}, "would sort"),
        ({"window": 128, "window2": 64}, "entropy.window2 (64)"),
    ):
        body = {"model": "efficientnet_lite0", "target": 1, "entropy": entropy}
        p = problem(api.c.post("/entropy-sweep", json=body))
        assert p["errors"] == [{"field": "entropy", "message": p["errors"][0]["message"]}]
        assert says in p["errors"][0]["message"] and "224" in p["errors"][0]["message"]
    body = {"model": "efficientnet_lite0", "target": 1, "size": 64, "entropy": {"window": 128}}
    p = problem(api.c.post("/entropy-sweep", json=body))
    assert p["errors"][0]["field"] == "entropy"
    assert "entropy.window (128) must be at most the image's side (64 px)" in str(p["errors"])
    assert api.nothing_queued()
    ok = api.c.post("/entropy-sweep", json={"model": "efficientnet_lite0", "target": 1})
    assert ok.status_code == 202, ok.text
