"""API behaviour against a real Redis server (no worker): validation, names, 404/409, auth,
idempotency, listing, models, health. Jobs are driven through their states with the worker's
own store code (``JobStore``), the way a worker would."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import new_prefix
from prometheus_client.parser import text_string_to_metric_families

from app.kinds import MAX_SUGGESTED
from app.main import create_app
from core.artifacts import store_from_settings, write_all
from core.queue import queue_key
from core.settings import Settings
from core.store import _CREATE, JobStore

TINY_LABELS = [f"class {i}" for i in range(9)] + ["soccer ball"]


class Api:
    def __init__(self, client: TestClient, store: JobStore, settings: Settings) -> None:
        self.c = client
        self.store = store
        self.settings = settings
        self.artifacts = store_from_settings(settings)

    def stage(self, job_id: str, attempt: int, files: list[tuple[str, bytes]]) -> None:
        """What a worker does before it finishes an attempt: write the files to the artifact
        store under the attempt's prefix and stage their pointers."""
        media = {"png": "image/png", "json": "application/json"}
        typed = [(n, d, media.get(n.rsplit(".", 1)[-1], "application/octet-stream"))
                 for n, d in files]  # fmt: skip
        ptrs = write_all(self.artifacts, job_id, f"a{attempt}", typed)
        self.store.stage_artifacts(job_id, attempt, [(n, json.dumps(p)) for n, p in ptrs.items()])

    def queued_messages(self) -> int:
        return int(self.store.r.llen(queue_key(self.settings)))

    def job_count(self) -> int:
        return int(self.store.r.zcard(self.store.keys.index))

    def write_jobs(
        self, kind: str, n: int, extra: dict[str, str] | None = None, at: float | None = None
    ) -> list[str]:
        """``n`` queued records of ``kind``, oldest first (created now, or all at time ``at``),
        written by the Lua step the API's create runs (no broker message), one pipeline for all:
        many jobs without many POSTs."""
        create = self.store.r.register_script(_CREATE)
        pipe = self.store.r.pipeline(transaction=False)
        tag = uuid.uuid4().hex[:6]
        ids = [f"{kind}-{tag}-{i:05d}" for i in range(n)]  # a tie in score: newer id first
        spec = {"model": "tiny", "targets": [9]}
        for job_id in ids:
            keys, args = self.store._create_args(job_id, kind, spec, None, at or time.time(), extra)
            create(keys=keys, args=args, client=pipe)
        pipe.execute()
        return ids


def _catalog() -> dict[str, Any]:
    def entry(name: str, labels: list[str]) -> dict[str, Any]:
        return {"info": {"name": name, "input_size": 64, "num_classes": len(labels)},
                "labels": labels}  # fmt: skip

    return {
        "tiny": entry("tiny", TINY_LABELS),
        "efficientnet_lite0": entry("efficientnet_lite0", ["tench", "goldfish", "soccer ball"]),
    }


def make_api(redis_server: Any, **overrides: Any) -> Iterator[Api]:
    prefix = new_prefix("api")
    tmp = tempfile.mkdtemp(prefix="tivis-artifacts-")
    overrides.setdefault("artifacts_url", tmp)
    settings = Settings(redis_url=redis_server.url, key_prefix=prefix, **overrides)
    store = JobStore(redis_server.client(), prefix, settings.ttl_seconds)
    store.publish_catalog(_catalog())
    with TestClient(create_app(settings)) as client:
        yield Api(client, store, settings)
    keys = list(store.r.scan_iter(match=f"{prefix}:*"))
    if keys:
        store.r.delete(*keys)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def api(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server)


@pytest.fixture
def secured(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server, api_keys="k-one, k-two")


def assert_problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    for key in ("type", "title", "status", "detail", "instance"):
        assert key in body, body
    assert body["status"] == status
    return dict(body)


def submit(api: Api, body: dict[str, Any] | None = None, path: str = "/visualize",
           **headers: str) -> Any:  # fmt: skip
    return api.c.post(path, json=body or {"model": "tiny", "targets": ["soccer ball"]},
                      headers=headers)  # fmt: skip


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "tiny", "targets": ["soccer ball"], "optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"model": "tiny", "targets": ["soccer ball"], "size": 5000}, "size"),
        ({"model": "tiny", "targets": ["soccer ball"], "initial_gray": 256}, "initial_gray"),
        ({"model": "tiny", "targets": ["soccer ball"], "initial_gray": "dark"}, "initial_gray"),
        ({"model": "tiny", "targets": "soccer ball"}, "targets"),
        ({"model": "tiny", "targets": []}, "targets"),
        ({"model": "tiny"}, "targets"),
        ({"model": "tiny", "targets": [1], "schedule": [{"op": "rotate"}]}, "schedule[0]"),
        ({"model": "tiny", "targets": [1], "method": "magic"}, "method"),
        ({"model": "tiny", "targets": [1], "bogus": 1}, "bogus"),
    ],
)
def test_validation_names_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    p = assert_problem(submit(api, body), 422)
    assert field in [e["field"] for e in p["errors"]], p
    assert all(e["message"] for e in p["errors"])
    assert api.job_count() == 0 and api.queued_messages() == 0


def test_sweep_validation_and_malformed_json(api: Api) -> None:
    p = assert_problem(submit(api, {"model": "tiny", "target": 9, "gray_levels": [0, 300]},
                              "/entropy-sweep"), 422)  # fmt: skip
    assert p["errors"][0]["field"] == "gray_levels"
    r = api.c.post("/visualize", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(r, 422)


# -- names checked before queueing ----------------------------------------------------------
def test_close_names_for_the_first_few_unknown_classes_only(api: Api) -> None:
    """Every unknown class is listed; only the first ``MAX_SUGGESTED`` get close names (each a
    search of every label, and a registered model may have 100,000)."""
    targets = ["socer ball"] * 12
    p = assert_problem(submit(api, {"model": "tiny", "targets": targets}), 422)
    assert [e["field"] for e in p["errors"]] == [f"targets[{i}]" for i in range(12)]
    with_names = [e for e in p["errors"] if e["suggestions"]]
    assert len(with_names) == MAX_SUGGESTED
    assert all("soccer ball" in e["suggestions"] for e in with_names)
    assert api.job_count() == 0


def test_unknown_model_suggests_and_queues_nothing(api: Api) -> None:
    p = assert_problem(submit(api, {"model": "tinny", "targets": ["soccer ball"]}), 422)
    assert "tiny" in p["suggestions"]
    assert p["errors"][0]["field"] == "model"
    assert api.job_count() == 0 and api.queued_messages() == 0


def test_unknown_class_suggests_and_queues_nothing(api: Api) -> None:
    p = assert_problem(submit(api, {"model": "tiny", "targets": [3, "socer ball"]}), 422)
    assert p["errors"][0]["field"] == "targets[1]"
    assert "soccer ball" in p["suggestions"]
    p = assert_problem(submit(api, {"model": "tiny", "targets": [10]}), 422)
    assert "out of range" in p["detail"]
    p = assert_problem(submit(api, {"model": "tiny", "target": "bal"}, "/entropy-sweep"), 422)
    assert p["errors"][0]["field"] == "target" and "soccer ball" in p["suggestions"]
    p = assert_problem(
        submit(api, {"model": "tiny", "targets": [1], "judges": ["efficientnet_lite"]}), 422
    )
    assert p["errors"][0]["field"] == "judges[0]"
    assert "efficientnet_lite0" in p["suggestions"]
    assert api.job_count() == 0 and api.queued_messages() == 0


@pytest.mark.parametrize("text", ["²", "1" * 5000])
def test_a_digit_like_class_is_a_422_not_a_500(api: Api, text: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails, as does ``int()`` of 5,000 digits."""
    for path, body, field in [
        ("/visualize", {"model": "tiny", "targets": [1, text]}, "targets[1]"),
        ("/entropy-sweep", {"model": "tiny", "target": text}, "target"),
        ("/compare", {"models": ["tiny", "efficientnet_lite0"], "targets": [text]}, "targets[0]"),
        ("/atlas", {"model": "tiny", "classes": [1, text]}, "classes[1]"),
        ("/atlas", {"model": "tiny", "classes": f"0-2, {text}"}, "classes[1]"),
    ]:
        p = assert_problem(submit(api, body, path), 422)
        assert field in [e["field"] for e in p["errors"]], (path, p)
    assert api.job_count() == 0 and api.queued_messages() == 0
    # ASCII digits still name a class, leading zeros and all
    assert submit(api, {"model": "tiny", "targets": ["0" * 30 + "9"]}).status_code == 202


def test_accepted_job_is_stored_and_queued(api: Api) -> None:
    r = submit(api, {"model": "tiny", "targets": ["Soccer Ball", 3]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/jobs/{job['id']}"
    assert api.queued_messages() == 1
    got = api.c.get(f"/jobs/{job['id']}").json()
    assert got["status"] == "queued" and got["attempts"] == 0 and got["kind"] == "visualize"
    assert got["params"]["targets"] == ["Soccer Ball", 3]
    assert got["params"]["optimizer"]["q_target"] == 0.99  # SPEC defaults echoed


# -- 404, 405, 409 ----------------------------------------------------------------------------
def test_not_found_and_method_not_allowed_are_problems(api: Api) -> None:
    assert assert_problem(api.c.get("/jobs/nope"), 404)["type"].endswith("job-not-found")
    assert_problem(api.c.get("/jobs/nope/artifacts/x.png"), 404)
    assert_problem(api.c.get("/jobs/nope/events"), 404)
    assert_problem(api.c.post("/jobs/nope/cancel"), 404)
    assert_problem(api.c.get("/no/such/route"), 404)
    assert_problem(api.c.delete("/visualize"), 405)


def test_cancel_queued_then_finished_is_409(api: Api) -> None:
    job_id = submit(api).json()["id"]
    r = api.c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert api.store.start(job_id, 3)[0] == "skip"  # a queued job canceled never starts
    p = assert_problem(api.c.post(f"/jobs/{job_id}/cancel"), 409)
    assert p["job_status"] == "canceled"


def test_cancel_running_asks_the_worker_then_409_once_done(api: Api) -> None:
    job_id = submit(api).json()["id"]
    assert api.store.start(job_id, 3) == ("run", "1")
    r = api.c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    assert api.store.progress(job_id, {"round": 1}) is True  # the worker sees the flag
    assert api.store.finish(job_id, 1, "canceled", {})
    assert api.c.get(f"/jobs/{job_id}").json()["status"] == "canceled"
    assert_problem(api.c.post(f"/jobs/{job_id}/cancel"), 409)


def test_finished_job_shows_result_artifacts_and_events(api: Api) -> None:
    job_id = submit(api).json()["id"]
    api.store.start(job_id, 3)
    api.stage(job_id, 1, [("a.png", b"\x89PNG..."), ("r.json", b"{}")])
    listing = [{"name": "a.png", "media_type": "image/png", "size": 7},
               {"name": "r.json", "media_type": "application/json", "size": 2}]  # fmt: skip
    result = {"targets": [{"artifacts": {"image": "a.png", "report": "r.json"}}]}
    assert api.store.finish(job_id, 1, "succeeded", {"result": result, "artifacts": listing})
    job = api.c.get(f"/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["result"]["targets"][0]["urls"]["image"] == f"/jobs/{job_id}/artifacts/a.png"
    r = api.c.get(f"/jobs/{job_id}/artifacts/a.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == b"\x89PNG..."
    assert (
        api.c.get(f"/jobs/{job_id}/artifacts/r.json")
        .headers["content-type"]
        .startswith("application/json")
    )
    assert_problem(api.c.get(f"/jobs/{job_id}/artifacts/zzz.png"), 404)
    with api.c.stream("GET", f"/jobs/{job_id}/events") as s:
        text = "".join(s.iter_text())
    events = [ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("event: ")]
    assert events[0] == "status" and events[-1] == "end"
    assert_problem(api.c.post(f"/jobs/{job_id}/cancel"), 409)


def test_artifact_downloads_stream_with_etag_length_and_ranges(api: Api) -> None:
    job_id = submit(api).json()["id"]
    api.store.start(job_id, 3)
    data = bytes(range(256)) * 4000  # 1,024,000 bytes: several chunks
    api.stage(job_id, 1, [("big.png", data)])
    listing = [{"name": "big.png", "media_type": "image/png", "size": len(data)}]
    assert api.store.finish(job_id, 1, "succeeded", {"result": {}, "artifacts": listing})
    url = f"/jobs/{job_id}/artifacts/big.png"
    r = api.c.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data)) and r.headers["accept-ranges"] == "bytes"
    etag = r.headers["etag"]
    assert etag.startswith('"')
    assert api.c.get(url, headers={"If-None-Match": etag}).status_code == 304
    part = api.c.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert part.headers["content-length"] == "100"
    tail = api.c.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    rest = api.c.get(url, headers={"Range": f"bytes={len(data) - 5}-"})
    assert rest.status_code == 206 and rest.content == data[-5:]
    bad = api.c.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
    stale = api.c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and len(stale.content) == len(data)
    # the bytes live in the artifact store; Redis holds only a small pointer
    ptr = json.loads(api.store.r.hget(api.store.keys.artifacts(job_id), "big.png"))
    assert ptr["key"] == f"{job_id}/a1/big.png" and ptr["size"] == len(data)
    api.artifacts.delete([ptr["key"]])  # gone from the store (expired): a clear 404
    assert_problem(api.c.get(url), 404)


def test_head_of_an_artifact_is_its_get_without_the_body(api: Api) -> None:
    job_id = submit(api).json()["id"]
    api.store.start(job_id, 3)
    api.stage(job_id, 1, [("a.png", b"\x89PNG" + bytes(1000)), ("r.json", b'{"a": 1}')])
    listing = [{"name": "a.png", "media_type": "image/png", "size": 1004},
               {"name": "r.json", "media_type": "application/json", "size": 8}]  # fmt: skip
    assert api.store.finish(job_id, 1, "succeeded", {"result": {}, "artifacts": listing})
    for name in ("a.png", "r.json"):
        url = f"/jobs/{job_id}/artifacts/{name}"
        got, head = api.c.get(url), api.c.head(url)
        assert head.status_code == got.status_code == 200, head.text
        assert head.content == b"" and got.content
        for h in ("content-type", "content-length", "etag", "accept-ranges", "cache-control"):
            assert head.headers[h] == got.headers[h], h
        part = api.c.head(url, headers={"Range": "bytes=0-3"})
        assert part.status_code == 206 and part.headers["content-length"] == "4"
        assert part.content == b""
    assert api.c.head(f"/jobs/{job_id}/artifacts/nope.png").status_code == 404


# -- auth --------------------------------------------------------------------------------------
def test_auth_off_by_default(api: Api) -> None:
    assert api.c.get("/models").status_code == 200


def test_auth_on(secured: Api) -> None:
    c = secured.c
    for path in ("/models", "/jobs", "/jobs/x", "/metrics"):
        assert_problem(c.get(path), 401)
    assert_problem(c.get("/models", headers={"X-API-Key": "wrong"}), 401)
    assert_problem(submit(secured), 401)
    assert secured.job_count() == 0
    assert c.get("/models", headers={"X-API-Key": "k-two"}).status_code == 200
    assert c.get("/models", headers={"Authorization": "Bearer k-one"}).status_code == 200
    assert submit(secured, None, "/visualize", **{"X-API-Key": "k-one"}).status_code == 202
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code in (200, 503)
    assert c.get("/").status_code == 200


# -- idempotency -------------------------------------------------------------------------------
def test_idempotency_key(api: Api) -> None:
    body = {"model": "tiny", "targets": ["soccer ball"]}
    a = submit(api, body, **{"Idempotency-Key": "abc"})
    b = submit(api, body, **{"Idempotency-Key": "abc"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["idempotent-replayed"] == "true"
    assert api.job_count() == 1 and api.queued_messages() == 1
    p = assert_problem(submit(api, {**body, "seed": 7}, **{"Idempotency-Key": "abc"}), 422)
    assert p["job"] == a.json()["id"]
    c = submit(api, body, **{"Idempotency-Key": "other"})
    assert c.json()["id"] != a.json()["id"] and api.job_count() == 2


# -- listing -----------------------------------------------------------------------------------
def test_list_pagination_and_filters(api: Api) -> None:
    ids = []
    for i in range(7):
        if i % 3 == 2:
            r = submit(api, {"model": "tiny", "target": 9, "gray_levels": [0, 128]},
                       "/entropy-sweep")  # fmt: skip
        else:
            r = submit(api, {"model": "tiny", "targets": [i]})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    api.c.post(f"/jobs/{ids[0]}/cancel")
    api.c.post(f"/jobs/{ids[3]}/cancel")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.c.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1] and pages == 3
    canceled = api.c.get("/jobs", params={"status": "canceled"}).json()["items"]
    assert [j["id"] for j in canceled] == [ids[3], ids[0]]
    sweeps = api.c.get("/jobs", params={"kind": "sweep"}).json()["items"]
    assert [j["id"] for j in sweeps] == [ids[5], ids[2]]
    assert sweeps[0]["summary"] == {"model": "tiny", "targets": [9]}
    both = api.c.get("/jobs", params=[("status", "queued"), ("kind", "visualize")]).json()
    assert {j["id"] for j in both["items"]} == {ids[1], ids[4], ids[6]}
    assert_problem(api.c.get("/jobs", params={"status": "bogus"}), 422)
    assert_problem(api.c.get("/jobs", params={"limit": 0}), 422)
    assert_problem(api.c.get("/jobs", params={"cursor": "!!"}), 422)


def test_list_skips_nothing_when_it_prunes_expired_records(api: Api) -> None:
    """Records that expired under the index are dropped from it during the scan; the rows
    after them are still listed (the scan used to page on by offset past the removed rows)."""
    sweeps = api.write_jobs("sweep", 50)
    visualize = api.write_jobs("visualize", 100)
    api.store.r.delete(*[api.store.keys.job(j) for j in visualize[-30:]])
    page = api.c.get("/jobs", params={"kind": "sweep", "limit": 50}).json()
    assert [j["id"] for j in page["items"]] == sweeps[::-1]
    assert api.job_count() == 120


def test_list_pages_through_jobs_of_the_same_instant(api: Api) -> None:
    """More jobs at one index score than a fetch holds (ties are ordered by id): each is
    listed once, in order, whichever of them a cursor points at."""
    ids = api.write_jobs("visualize", 120, at=1_700_000_000.5)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.c.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]


# -- models, health, metrics -------------------------------------------------------------------
def test_models_and_classes(api: Api) -> None:
    names = [m["name"] for m in api.c.get("/models").json()["items"]]
    assert names == ["efficientnet_lite0", "tiny"]
    r = api.c.get("/models/tiny/classes", params={"q": "ball"}).json()
    assert r["items"] == [{"index": 9, "label": "soccer ball"}] and r["total"] == 10
    assert len(api.c.get("/models/tiny/classes").json()["items"]) == 10
    p = assert_problem(api.c.get("/models/tinyy/classes"), 404)
    assert "tiny" in p["suggestions"]


@pytest.mark.parametrize("name", ["a@²", "tiny@²", "tiny@" + "1" * 5000])
def test_a_malformed_model_version_is_a_404(api: Api, name: str) -> None:
    for method in ("GET", "DELETE"):
        p = assert_problem(api.c.request(method, f"/models/{name}"), 404)
        assert p["type"].endswith("model-not-found")


def test_health_ready_and_metrics(api: Api) -> None:
    assert api.c.get("/healthz").json() == {"status": "ok"}
    r = api.c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"] == {"redis": "ok", "workers": 0}
    api.store.heartbeat("w1", {"name": "w1"}, ttl=30)
    assert api.c.get("/readyz").status_code == 200
    submit(api)
    r = api.c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # fmt: skip
    queued = (("kind", "visualize"), ("status", "queued"))
    assert families["tivis_jobs_current"].type == "gauge"
    assert samples[("tivis_jobs_current", queued)] == 1
    assert families["tivis_jobs"].type == "counter"
    assert samples[("tivis_jobs_total", queued)] == 1
    assert samples[("tivis_queue_depth", (("queue", api.settings.queue),))] == 1
    assert samples[("tivis_workers", ())] == 1
    assert samples[("tivis_event_streams", ())] == 0
    assert families["tivis_job_duration_seconds"].type == "histogram"


def test_openapi_lists_the_routes(api: Api) -> None:
    paths = api.c.get("/openapi.json").json()["paths"]
    for p in ("/visualize", "/entropy-sweep", "/jobs", "/jobs/{job_id}", "/models"):
        assert p in paths
    assert json.dumps(paths)  # serializable


def _queued_message(api: Api) -> dict[str, Any]:
    raw = api.store.r.rpop(queue_key(api.settings))
    assert raw is not None
    msg = json.loads(raw)
    import base64

    msg["body"] = json.loads(base64.b64decode(msg["body"]))
    return dict(msg)


def test_atomic_enqueue_writes_what_send_task_writes(redis_server: Any) -> None:
    """The message pushed with the record equals Celery's own, but for per-message fields."""
    msgs = []
    for mode in ("atomic", "send_task"):
        for api in make_api(redis_server, enqueue=mode):
            job_id = submit(api).json()["id"]
            assert api.queued_messages() == 1
            msg = _queued_message(api)
            assert msg["headers"]["id"] == msg["properties"]["correlation_id"] == job_id
            assert msg["headers"]["task"] == "tivis.run_job"
            assert msg["body"][0] == [job_id]
            for k in ("id", "root_id", "argsrepr", "origin"):
                msg["headers"].pop(k)
            for k in ("correlation_id", "delivery_tag", "reply_to"):  # per message or app
                msg["properties"].pop(k)
            msg["body"][0] = None
            msgs.append(msg)
    assert msgs[0] == msgs[1]
