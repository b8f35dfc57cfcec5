"""``POST /classify`` and ``POST /screen`` against a real Redis server (no worker): the multipart
contract, every refusal as problem+json with its field, and that a refused request leaves nothing
behind (no job record, no queue message, no uploaded bytes)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from test_api import Api, assert_problem, make_api
from test_uploads import encoded, png_claiming


@pytest.fixture
def api(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server, max_upload_bytes=200_000, max_upload_pixels=4_000_000)


def photo_png(size: tuple[int, int] = (120, 80)) -> bytes:
    im = Image.new("RGB", size, (10, 120, 200))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def post(
    api: Api,
    path: str,
    files: list[tuple[str, bytes]] | None = None,
    spec: dict[str, Any] | None = None,
    **headers: str,
) -> Any:
    parts: list[tuple[str, tuple[str | None, bytes, str]]] = [
        ("images", (name, data, "application/octet-stream")) for name, data in files or []
    ]
    if spec is not None:
        parts.append(("spec", (None, json.dumps(spec).encode(), "application/json")))
    return api.c.post(path, files=parts, headers=headers)


def leftovers(api: Api) -> list[str]:
    """Every job-related key under the test's prefix (records, uploads, index, idempotency)."""
    prefix = api.settings.key_prefix
    keys = [k.decode() for k in api.store.r.scan_iter(match=f"{prefix}:*")]
    return sorted(k for k in keys if k.startswith((f"{prefix}:job", f"{prefix}:idem")))


def assert_nothing_queued(api: Api) -> None:
    assert api.job_count() == 0
    assert api.queued_messages() == 0
    assert api.c.get("/jobs").json()["items"] == []
    assert leftovers(api) == []


def truncated_jpeg() -> bytes:
    data = encoded("JPEG", (200, 150), quality=95)
    return data[: len(data) // 2]


RECT = {"x": 10, "y": 10, "width": 20, "height": 20}


@pytest.mark.parametrize(
    ("path", "files", "spec", "status", "field", "words"),
    [
        # wrong type: a GIF named .png is refused by its content
        ("/classify", [("cat.png", encoded("GIF"))], None, 422, "images[cat.png]", "GIF"),
        ("/classify", [("notes.png", b"hello, world\n" * 20)], None, 422, "images[notes.png]",
         "text"),
        ("/classify", [("half.jpg", truncated_jpeg())], None, 422, "images[half.jpg]",
         "truncated"),
        # a few hundred bytes claiming 50000 × 50000 pixels
        ("/classify", [("bomb.png", png_claiming(50_000, 50_000))], None, 413,
         "images[bomb.png]", "pixels"),
        # over TIVIS_MAX_UPLOAD_BYTES (200 kB here): refused while streaming
        ("/classify", [("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000)], None, 413,
         "images[big.png]", "limit of 200000 bytes"),
        ("/screen", [("p.png", photo_png((120, 80)))],
         {"rectangles": [{"x": 100, "y": 0, "width": 40, "height": 10}]}, 422, "rectangles",
         "extends past the 120×80 image"),
        ("/classify", [("p.png", photo_png())], {"models": ["resnet9000"]}, 422, "models",
         "unknown model 'resnet9000'"),
        ("/screen", [("p.png", photo_png())], {"model": "tinny", "rectangles": [RECT]}, 422,
         "models", "closest: tiny"),
        ("/classify", [], {"model": "tiny"}, 422, "images", "no image"),
        ("/screen", [("a.png", photo_png()), ("b.png", photo_png())], {"rectangles": [RECT]},
         422, "image", "exactly one image"),
        ("/screen", [("p.png", photo_png())], {"model": "tiny"}, 422, "rectangles", "required"),
        ("/classify", [("p.png", photo_png())], {"model": "tiny", "top_k": 0}, 422, "top_k", ""),
        ("/classify", [("p.png", photo_png())], {"model": "tiny", "images": ["q.png"]}, 422,
         "images", "no upload named 'q.png'"),
        ("/classify", [("p.png", photo_png()), ("q.png", photo_png())],
         {"model": "tiny", "images": ["q.png"]}, 422, "images[p.png]", "not one of"),
        ("/classify", [("p.png", photo_png()), ("p.png", photo_png())], None, 422,
         "images[p.png]", "two uploads"),
    ],
)  # fmt: skip
def test_bad_request_is_a_problem_and_leaves_nothing(
    api: Api,
    path: str,
    files: list[tuple[str, bytes]],
    spec: dict[str, Any] | None,
    status: int,
    field: str,
    words: str,
) -> None:
    p = assert_problem(post(api, path, files, spec), status)
    assert p["errors"][0]["field"] == field, p
    assert words in p["detail"], p
    assert_nothing_queued(api)


def test_an_unknown_model_comes_with_the_closest_names(api: Api) -> None:
    """As for the other kinds: ``suggestions`` in the problem and in its error."""
    for path, spec in (("/classify", {"models": ["tinny"]}),
                       ("/screen", {"model": "tinny", "rectangles": [RECT]})):  # fmt: skip
        p = assert_problem(post(api, path, [("p.png", photo_png())], spec), 422)
        assert p["type"].endswith("/unknown-name")
        assert p["suggestions"] == ["tiny"] and p["errors"][0]["suggestions"] == ["tiny"]
    assert_nothing_queued(api)


def test_oversize_declared_body_is_refused_before_reading(api: Api) -> None:
    body = b"x" * 100
    r = api.c.post(
        "/classify",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": "999999999"},
    )
    assert_problem(r, 413)
    assert_nothing_queued(api)


def test_other_bodies_are_refused(api: Api) -> None:
    r = api.c.post("/classify", content=b"abc", headers={"content-type": "text/plain"})
    assert assert_problem(r, 415)["errors"][0]["field"] == "content-type"
    r = api.c.post("/classify", files=[("file", ("a.png", photo_png(), "image/png"))])
    p = assert_problem(r, 422)
    assert p["errors"][0]["field"] == "file" and "'images'" in p["detail"]
    r = api.c.post("/classify", files=[("spec", (None, b"{not json", "application/json"))])
    assert assert_problem(r, 422)["errors"][0]["field"] == "spec"
    r = api.c.post("/screen", content=b"{", headers={"content-type": "application/json"})
    assert_problem(r, 422)
    assert_nothing_queued(api)


def test_classify_upload_is_stored_with_the_job_and_queued(api: Api) -> None:
    a, b = photo_png((120, 80)), encoded("WEBP", (50, 40))
    r = post(api, "/classify", [("dir/a.png", a), ("b.webp", b)], {"models": ["tiny"]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "classify" and r.headers["Location"] == f"/jobs/{job['id']}"
    assert api.job_count() == 1 and api.queued_messages() == 1
    rec = api.c.get(f"/jobs/{job['id']}").json()
    # The stored spec names every image (upload names, folders dropped), in upload order.
    assert rec["params"] == {
        "webhook": None,
        "models": ["tiny"],
        "top_k": 5,
        "images": ["a.png", "b.webp"],
    }
    assert rec["summary"]["model"] == ["tiny"]
    key = api.store.keys.uploads(job["id"])
    assert api.store.r.hgetall(key) == {b"a.png": a, b"b.webp": b}
    assert 0 < api.store.r.ttl(key) <= api.settings.ttl_seconds
    # The worker's view of its inputs.
    assert api.store.images(job["id"], ["a.png", "b.webp"], []) == {"a.png": a, "b.webp": b}


def test_screen_defaults_to_the_one_upload_and_keeps_idempotency(api: Api) -> None:
    spec = {"model": "tiny", "rectangles": [RECT]}
    r1 = post(api, "/screen", [("p.png", photo_png())], spec, **{"Idempotency-Key": "s-1"})
    r2 = post(api, "/screen", [("p.png", photo_png())], spec, **{"Idempotency-Key": "s-1"})
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["id"] == r2.json()["id"] and r2.headers["Idempotent-Replayed"] == "true"
    assert api.job_count() == 1 and api.queued_messages() == 1
    params = api.c.get(f"/jobs/{r1.json()['id']}").json()["params"]
    assert params["image"] == "p.png" and params["models"] == ["tiny"]
    other = post(api, "/screen", [("p.png", photo_png((64, 64)))], spec,
                 **{"Idempotency-Key": "s-1"})  # fmt: skip
    assert assert_problem(other, 422)["type"].endswith("idempotency-key-reused")


def finished_job(api: Api, status: str = "succeeded") -> str:
    """A visualize job driven to ``status`` the way a worker does, with a PNG and a JSON."""
    r = api.c.post("/visualize", json={"model": "tiny", "targets": ["soccer ball"]})
    job_id = str(r.json()["id"])
    api.store.r.delete(f"{api.settings.key_prefix}:broker:{api.settings.queue}")
    api.store.start(job_id, 3)
    png = photo_png((64, 64))
    api.stage(job_id, 1, [("v.png", png), ("v.json", b"{}")])
    listing = [{"name": "v.png", "media_type": "image/png", "size": len(png)},
               {"name": "v.json", "media_type": "application/json", "size": 2}]  # fmt: skip
    assert api.store.finish(job_id, 1, status, {"result": {}, "artifacts": listing})
    return job_id


def test_classify_an_artifact_of_a_finished_job(api: Api) -> None:
    src = finished_job(api)
    spec = {"model": "tiny", "images": [{"job": src, "artifact": "v.png"}]}
    r = api.c.post("/classify", json=spec)  # no upload: plain JSON works too
    assert r.status_code == 202, r.text
    rec = api.c.get(f"/jobs/{r.json()['id']}").json()
    assert rec["params"]["images"] == [{"job": src, "artifact": "v.png"}]
    read = api.artifacts.get
    got = api.store.images(r.json()["id"], [], [(src, "v.png")], read=lambda p: read(p["key"]))
    assert got[f"{src}/v.png"].startswith(b"\x89PNG")
    # mixed with an upload, as multipart
    mixed = {"model": "tiny", "images": ["up.png", {"job": src, "artifact": "v.png"}]}
    assert post(api, "/classify", [("up.png", photo_png())], mixed).status_code == 202
    # a screen of the artifact checks its rectangles against the artifact's size (64 × 64)
    screen = {"model": "tiny", "image": {"job": src, "artifact": "v.png"},
              "rectangles": [{"x": 40, "y": 0, "width": 30, "height": 5}]}  # fmt: skip
    p = assert_problem(api.c.post("/screen", json=screen), 422)
    assert p["errors"][0]["field"] == "rectangles" and "64×64" in p["detail"]


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ({"job": "nope", "artifact": "v.png"}, "no job 'nope'"),
        ({"job": "@SRC", "artifact": "w.png"}, "does not exist; its images: v.png"),
        ({"job": "@SRC", "artifact": "v.json"}, "is not an image"),
        ({"job": "@RUNNING", "artifact": "v.png"}, "is running"),
    ],
)
def test_bad_artifact_reference_queues_nothing(api: Api, ref: dict[str, str], words: str) -> None:
    src = finished_job(api)
    running = str(api.c.post("/visualize", json={"model": "tiny", "targets": [1]}).json()["id"])
    api.store.start(running, 3)
    job = {"@SRC": src, "@RUNNING": running}.get(ref["job"], ref["job"])
    before = (api.job_count(), api.queued_messages())
    r = api.c.post("/classify", json={"model": "tiny", "images": [{**ref, "job": job}]})
    p = assert_problem(r, 422)
    assert p["errors"][0]["field"] == "images[0]" and words in p["detail"], p
    assert (api.job_count(), api.queued_messages()) == before


def test_openapi_documents_the_multipart_contract(api: Api) -> None:
    doc = api.c.get("/openapi.json").json()
    for path, model in (("/classify", "ClassifySpec"), ("/screen", "ScreenSpec")):
        body = doc["paths"][path]["post"]["requestBody"]["content"]
        props = body["multipart/form-data"]["schema"]["properties"]
        assert props["images"]["items"]["format"] == "binary"
        assert "spec" in props
        assert body["application/json"]["schema"]["$ref"] == f"#/components/schemas/{model}"
        assert model in doc["components"]["schemas"]
    assert "Rectangle" in doc["components"]["schemas"]
    assert "ArtifactRef" in doc["components"]["schemas"]


def test_byte_limit_is_enforced_while_the_upload_streams() -> None:
    """No Content-Length (chunked): reading stops at the first file past the limit, long before
    the body ends."""
    import anyio
    from starlette.requests import Request

    from app.uploads import BodyRejected, read_body

    boundary = "tivis-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        'filename="big.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG'
    ).encode()
    chunks = [head] + [b"\0" * 65536] * 100 + [f"\r\n--{boundary}--\r\n".encode()]
    sent: list[int] = []

    async def receive() -> dict[str, Any]:
        sent.append(1)
        return {"type": "http.request", "body": chunks[len(sent) - 1],
                "more_body": len(sent) < len(chunks)}  # fmt: skip

    ctype = f"multipart/form-data; boundary={boundary}".encode()
    scope = {"type": "http", "method": "POST", "path": "/classify",
             "headers": [(b"content-type", ctype)]}  # fmt: skip

    async def read() -> None:
        await read_body(Request(scope, receive), max_file_bytes=200_000, max_files=16)

    with pytest.raises(BodyRejected) as info:
        anyio.run(read)
    assert (info.value.status, info.value.field) == (413, "images[big.png]")
    assert len(sent) <= 5, f"read {len(sent)} of {len(chunks)} chunks before refusing"
