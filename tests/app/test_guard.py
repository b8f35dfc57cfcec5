"""The small defects of issue 9 (item 5), each through the app against a real Redis server:
downloads, cache headers, keys (non-ASCII, checked first, scoped, admin), job ids, cursors,
non-finite numbers, strict targets, error bodies, body limits, the per-key queue limit and the
broker keys a start leaves behind."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from integration.harness import wait_for
from test_api import Api, assert_problem, make_api, submit

from app.guard import key_owner
from app.main import create_app
from core.settings import Settings

A = {"X-API-Key": "k-one"}
B = {"X-API-Key": "k-two"}
ADMIN = {"X-API-Key": "k-admin"}
BODY = {"model": "tiny", "targets": ["soccer ball"]}


@pytest.fixture
def api(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server)


@pytest.fixture
def keyed(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server, api_keys="k-one,k-two", admin_keys="k-admin")


def _succeeded(api: Api, job_id: str) -> None:
    """Drive a job to ``succeeded`` with one PNG artifact, the way a worker does."""
    assert api.store.start(job_id, 3)[0] == "run"
    api.stage(job_id, 1, [("a.png", b"\x89PNG...")])  # the file in the store, a pointer in Redis
    listing = [{"name": "a.png", "media_type": "image/png", "size": 7}]
    assert api.store.finish(job_id, 1, "succeeded", {"result": {}, "artifacts": listing})


# -- downloads and caching -------------------------------------------------------------------
def test_download_is_an_attachment_and_artifacts_are_public_without_keys(api: Api) -> None:
    job_id = submit(api).json()["id"]
    _succeeded(api, job_id)
    for flag in ("1", "true"):
        r = api.c.get(f"/jobs/{job_id}/artifacts/a.png", params={"download": flag})
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"] == 'attachment; filename="a.png"'
    r = api.c.get(f"/jobs/{job_id}/artifacts/a.png")
    assert "content-disposition" not in r.headers
    assert r.headers["cache-control"].startswith("public")


def test_artifacts_are_private_and_vary_by_key_when_keys_are_on(keyed: Api) -> None:
    job_id = submit(keyed, BODY, "/visualize", **A).json()["id"]
    _succeeded(keyed, job_id)
    r = keyed.c.get(f"/jobs/{job_id}/artifacts/a.png", headers=A)
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("private")
    assert "X-API-Key" in r.headers["vary"] and "Authorization" in r.headers["vary"]


# -- keys --------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", ["clé".encode(), "clé".encode("latin-1"), b"\xff\xfe"])
def test_a_non_ascii_key_is_a_wrong_key(keyed: Api, raw: bytes) -> None:
    r = keyed.c.get("/jobs", headers={"X-API-Key": raw})
    assert_problem(r, 401)
    r = keyed.c.get("/jobs", headers={"Authorization": b"Bearer " + raw})
    assert_problem(r, 401)


def test_the_key_is_checked_before_the_body(keyed: Api) -> None:
    c = keyed.c
    assert_problem(c.post("/visualize", json={"targets": "x", "bogus": 1}), 401)
    bad = c.post("/visualize", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(bad, 401)
    big = json.dumps({"targets": ["x" * 200_000]})
    assert_problem(c.post("/visualize", content=big), 401)
    assert_problem(c.post("/classify", content=b"junk", headers={"content-type": "x/y"}), 401)
    assert keyed.job_count() == 0


def test_jobs_are_scoped_to_the_key_that_made_them(keyed: Api) -> None:
    c = keyed.c
    job_a = submit(keyed, BODY, "/visualize", **A).json()["id"]
    job_b = submit(keyed, BODY, "/visualize", **B).json()["id"]
    raw = keyed.store.r.hgetall(keyed.store.keys.job(job_a))
    assert b"owner" in raw and not any(b"k-one" in v for v in raw.values())  # a hash, not the key
    # B cannot see, follow, cancel, download or reference A's job: 404 as for an unknown job
    assert_problem(c.get(f"/jobs/{job_a}", headers=B), 404)
    assert_problem(c.get(f"/jobs/{job_a}/events", headers=B), 404)
    assert_problem(c.post(f"/jobs/{job_a}/cancel", headers=B), 404)
    _succeeded(keyed, job_a)
    assert_problem(c.get(f"/jobs/{job_a}/artifacts/a.png", headers=B), 404)
    ref = {"images": [{"job": job_a, "artifact": "a.png"}]}
    p = assert_problem(c.post("/classify", json=ref, headers=B), 422)
    assert p["errors"][0]["field"] == "images[0]"
    assert [j["id"] for j in c.get("/jobs", headers=A).json()["items"]] == [job_a]
    assert [j["id"] for j in c.get("/jobs", headers=B).json()["items"]] == [job_b]
    # the admin key sees and cancels every key's jobs
    assert {j["id"] for j in c.get("/jobs", headers=ADMIN).json()["items"]} == {job_a, job_b}
    assert c.get(f"/jobs/{job_a}", headers=ADMIN).status_code == 200
    assert c.post(f"/jobs/{job_b}/cancel", headers=ADMIN).status_code == 200
    assert c.get(f"/jobs/{job_a}/artifacts/a.png", headers=A).status_code == 200


def test_listing_goes_on_past_the_scan_budget(keyed: Api) -> None:
    """A page stops after scanning 5,000 index rows; when that leaves it short (here: empty),
    its next_cursor goes on after the last row scanned, so following it reaches every job."""
    mine = submit(keyed, BODY, "/visualize", **A).json()["id"]
    keyed.write_jobs("visualize", 5000, {"owner": key_owner(b"k-two")})
    first = keyed.c.get("/jobs", headers=A).json()
    assert first["items"] == [] and first["next_cursor"]
    second = keyed.c.get("/jobs", params={"cursor": first["next_cursor"]}, headers=A).json()
    assert [j["id"] for j in second["items"]] == [mine] and second["next_cursor"] is None


def test_idempotency_keys_are_scoped_to_the_api_key(keyed: Api) -> None:
    first = submit(keyed, BODY, "/visualize", **A, **{"Idempotency-Key": "run-1"})
    again = submit(keyed, BODY, "/visualize", **A, **{"Idempotency-Key": "run-1"})
    other = submit(keyed, BODY, "/visualize", **B, **{"Idempotency-Key": "run-1"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]  # no replay of another key's job
    assert "idempotent-replayed" not in other.headers


def test_queued_jobs_per_key_are_limited(redis_server: Any) -> None:
    for api in make_api(redis_server, api_keys="k-one,k-two", max_queued_per_key=2):
        ids = [submit(api, BODY, "/visualize", **A).json()["id"] for _ in range(2)]
        r = submit(api, BODY, "/visualize", **A)
        p = assert_problem(r, 429)
        assert int(r.headers["retry-after"]) > 0 and "TIVIS_MAX_QUEUED_PER_KEY" in p["detail"]
        assert submit(api, BODY, "/visualize", **B).status_code == 202  # another key's own count
        assert api.c.post(f"/jobs/{ids[0]}/cancel", headers=A).status_code == 200
        assert submit(api, BODY, "/visualize", **A).status_code == 202  # a place came free
        assert api.store.start(ids[1], 3)[0] == "run"  # started jobs no longer count
        assert submit(api, BODY, "/visualize", **A).status_code == 202
        assert_problem(submit(api, BODY, "/visualize", **A), 429)


# -- input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/jobs/{id}:artifacts", "/jobs/{id}:uploads", "/jobs/{id}:artifacts/events",
     "/jobs/{id}:x/cancel"],
)  # fmt: skip
def test_job_ids_are_validated(api: Api, path: str) -> None:
    job_id = submit(api).json()["id"]
    _succeeded(api, job_id)
    url = path.format(id=job_id)
    r = api.c.post(url) if url.endswith("cancel") else api.c.get(url)
    p = assert_problem(r, 422)
    assert p["errors"][0]["field"] == "job_id"


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "NaN"])
def test_a_non_finite_cursor_is_a_422(api: Api, score: str) -> None:
    cursor = base64.urlsafe_b64encode(f"{score}|x".encode()).decode().rstrip("=")
    p = assert_problem(api.c.get("/jobs", params={"cursor": cursor}), 422)
    assert p["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('"optimizer": {"lr": NaN}', "optimizer.lr"),
        ('"tests": {"rotations": [0, Infinity]}', "tests.rotations[1]"),
        ('"tests": {"scales": [-Infinity]}', "tests.scales[0]"),
        ('"schedule": [{"op": "rotate", "value": NaN}]', "schedule[0].value"),
        ('"views": {"max_rotation": NaN}', "views.max_rotation"),
        ('"augment": {"q_target": NaN}', "augment.q_target"),
    ],
)
def test_non_finite_numbers_are_refused(api: Api, text: str, field: str) -> None:
    body = '{"model": "tiny", "targets": [1], ' + text + "}"
    r = api.c.post("/visualize", content=body, headers={"content-type": "application/json"})
    p = assert_problem(r, 422)
    assert field in [e["field"] for e in p["errors"]], p
    assert api.job_count() == 0


@pytest.mark.parametrize("target", [True, False])
def test_a_boolean_is_not_a_class(api: Api, target: bool) -> None:
    p = assert_problem(submit(api, {"model": "tiny", "targets": [target]}), 422)
    assert p["errors"][0]["field"].startswith("targets[0]")
    sweep = {"model": "tiny", "target": target}
    assert_problem(submit(api, sweep, "/entropy-sweep"), 422)
    assert api.job_count() == 0


def test_a_json_body_over_the_limit_is_a_413(redis_server: Any) -> None:
    for api in make_api(redis_server, max_json_bytes=4096):
        big = json.dumps({"model": "tiny", "targets": ["x" * 5000]})
        r = api.c.post("/visualize", content=big, headers={"content-type": "application/json"})
        p = assert_problem(r, 413)
        assert "4096" in p["detail"]
        assert api.job_count() == 0
        assert submit(api).status_code == 202


def test_a_multipart_label_does_not_lift_the_json_limit(redis_server: Any) -> None:
    """Only the upload routes take multipart bodies past TIVIS_MAX_JSON_BYTES (with limits of
    their own); elsewhere the label changes nothing: a declared length over the limit is a
    413 before a byte is read, and a body without one is cut at the limit."""
    multipart = {"content-type": "multipart/form-data; boundary=zzz"}
    part = b'--zzz\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\n'
    body = part + b"x" * 8000 + b"\r\n--zzz--\r\n"
    for api in make_api(redis_server, max_json_bytes=4096):
        for path in ("/visualize", "/entropy-sweep", "/compare", "/atlas"):
            declared = {**multipart, "content-length": str(256 * 2**20)}
            p = assert_problem(api.c.post(path, content=b"x" * 100, headers=declared), 413)
            assert "4096" in p["detail"], path
            streamed = api.c.post(path, content=iter([body]), headers=multipart)  # chunked
            assert "4096" in assert_problem(streamed, 413)["detail"], path
        # the upload routes still read a multipart body past the JSON limit (then refuse it
        # for what it holds, not for its size)
        for path in ("/classify", "/screen", "/models"):
            r = api.c.post(path, content=body, headers=multipart)
            assert assert_problem(r, 422)["errors"][0]["field"] == "f", path  # an unknown part
        assert api.job_count() == 0


# -- errors say nothing of their cause -------------------------------------------------------
def test_a_500_names_an_error_id_not_the_exception(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    prefix_settings = Settings(redis_url=redis_server.url, key_prefix="tivis-test-500")
    app = create_app(prefix_settings)
    with TestClient(app, raise_server_exceptions=False) as c:

        async def boom(job_id: str) -> None:
            raise RuntimeError("secret-detail at redis://user:pw@host")

        app.state.services.store.get = boom
        r = c.get("/jobs/abc")
        p = assert_problem(r, 500)
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert p["error_id"] in p["detail"]
        assert any(getattr(rec, "error_id", None) == p["error_id"] for rec in caplog.records)


def test_readyz_hides_the_redis_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    services = api.c.app.state.services  # type: ignore[attr-defined]

    async def down() -> None:
        raise ConnectionError("Error 111 connecting to secret-host:6379")

    services.redis.ping = down
    r = api.c.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["redis"] == "unavailable" and "secret" not in r.text
    assert any(getattr(rec, "error_id", None) == checks["error_id"] for rec in caplog.records)


# -- broker keys -------------------------------------------------------------------------------
def test_starting_the_api_leaves_no_unexpiring_broker_key(redis_server: Any) -> None:
    prefix = "tivis-test-binding"
    r = redis_server.client()
    for _ in range(3):
        with TestClient(create_app(Settings(redis_url=redis_server.url, key_prefix=prefix))):
            pass
    left = [k for k in r.scan_iter(match=f"{prefix}:*") if r.ttl(k) == -1]
    r.delete(*r.scan_iter(match=f"{prefix}:*")) if left else None
    assert left == []


# -- event streams through the hub -----------------------------------------------------------
def test_a_stream_follows_its_job_to_the_end(api: Api) -> None:
    """The hub wakes a stream for every change of its job: status, progress, then end."""
    job_id = submit(api).json()["id"]
    hub = api.c.app.state.services.events  # type: ignore[attr-defined]

    def drive() -> None:
        wait_for(lambda: hub.open == 1, 30, "the stream to open")
        assert api.store.start(job_id, 3)[0] == "run"
        for step in (1, 2):
            wait_for(lambda: hub.last.get(job_id, {}).get(b"status") == b"running", 30, "a read")
            api.store.progress(job_id, {"round": step, "percent": 50.0 * step})
            wait_for(lambda s=step: b'"round": %d' % s in hub.last[job_id].get(b"progress", b""),
                     30, "the hub to read the progress")  # fmt: skip
        api.store.finish(job_id, 1, "succeeded", {"result": {}})

    driver = threading.Thread(target=drive)
    driver.start()
    with api.c.stream("GET", f"/jobs/{job_id}/events") as s:
        text = "".join(s.iter_text())
    driver.join(30)
    events = [ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("event: ")]
    data = [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: ")]
    assert events == ["status", "status", "progress", "progress", "status", "end"], text
    assert [d.get("status") for d in data if "status" in d][:3] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert [d["round"] for d, e in zip(data, events, strict=True) if e == "progress"] == [1, 2]
    assert hub.open == 0


def test_admin_rights_come_from_the_guard(keyed: Api) -> None:
    """Model registration and deletion need an admin key; a wrong or non-ASCII one is refused
    (401/403), never a 500."""
    c = keyed.c
    assert_problem(c.delete("/models/x", headers=A), 403)
    assert_problem(c.delete("/models/x", headers={"X-API-Key": "clé".encode()}), 401)
    assert_problem(c.post("/models", headers=B, files={"file": ("m.pt", b"x")}), 403)
    r = c.delete("/models/x", headers=ADMIN)
    assert r.status_code != 403 and r.status_code < 500, r.text
