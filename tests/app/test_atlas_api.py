"""``POST /atlas`` and ``GET /atlas/<id>`` against a real Redis (no worker): validation against
the catalog, the plan stored with the job, and a partial atlas as chunks publish (driven with the
worker's own chunk store code)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_api import TINY_LABELS, Api, assert_problem, make_api

from core.artifacts import write_all
from core.chunks import ChunkStore


@pytest.fixture
def api(redis_server: Any) -> Iterator[Api]:
    yield from make_api(redis_server)


def test_atlas_is_queued_with_its_classes_resolved(api: Api) -> None:
    r = api.c.post("/atlas", json={"model": "tiny", "classes": "7, 0-2, soccer ball"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    rec = api.store.get(job_id)
    assert rec is not None and rec["kind"] == "atlas"
    assert json.loads(rec["atlas_classes"]) == [0, 1, 2, 7, 9]
    assert rec["spec"]["method"] == "invariant+" and rec["chunks_total"] == "1"
    assert api.queued_messages() == 1
    job = api.c.get(f"/jobs/{job_id}").json()
    assert job["kind"] == "atlas" and job["summary"]["targets"] == ["7, 0-2, soccer ball"]
    every = api.c.post("/atlas", json={"model": "tiny", "chunk_size": 3}).json()["id"]
    assert json.loads(api.store.get(every)["atlas_classes"]) == list(range(10))  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "tiny", "classes": ["0-3", "socer ball"]}, "classes[1]"),
        ({"model": "tiny", "classes": "0-10"}, "classes[0]"),
        ({"model": "tiny", "classes": [12]}, "classes[0]"),
        ({"model": "nope"}, "model"),
        ({"model": "tiny", "classes": "3-1"}, "classes"),
        ({"model": "tiny", "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_atlas_requests_name_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    problem = assert_problem(api.c.post("/atlas", json=body), 422)
    assert any(e["field"] == field for e in problem["errors"]), problem
    assert api.queued_messages() == 0


def test_many_unknown_classes_are_a_short_422(api: Api) -> None:
    """Every entry is checked, but a 422 lists the first few unknown ones (close names for
    the first of them only: each is a search of every label) and counts the rest."""
    names = [f"clas{i}" for i in range(2000)]  # each close to "class 0".."class 9"
    p = assert_problem(api.c.post("/atlas", json={"model": "tiny", "classes": names}), 422)
    assert [e["field"] for e in p["errors"]] == [f"classes[{i}]" for i in range(20)]
    assert sum("closest" in e["message"] for e in p["errors"]) == 5
    assert [bool(e["suggestions"]) for e in p["errors"]] == [True] * 5 + [False] * 15
    assert p["suggestions"] == p["errors"][0]["suggestions"]
    assert p["detail"].endswith("; and 1980 more not listed")
    assert api.queued_messages() == 0


def test_partial_atlas_is_readable_as_chunks_publish(api: Api) -> None:
    job_id = api.c.post("/atlas", json={"model": "tiny", "classes": "0-3", "chunk_size": 2}).json()[
        "id"
    ]
    assert api.store.start(job_id, 3) == ("run", "1")
    cs = ChunkStore(api.store.r, api.settings.key_prefix, api.settings.ttl_seconds)
    assert cs.plan(job_id, [0, 1, 2, 3], 2)
    atlas = api.c.get(f"/atlas/{job_id}").json()
    assert atlas["done"] == 0 and [p["label"] for p in atlas["pending"]] == TINY_LABELS[:4]
    assert cs.start_chunk(job_id, 1, 3) == ("run", "1")
    files = [(f"000{i}-class_{i}-image.png", b"\x89PNG" + bytes([i]), "image/png") for i in (2, 3)]
    ptrs = write_all(api.artifacts, job_id, "c0001-1-x", files)
    entry = {
        "chunk": 1,
        "classes": [
            {"index": i, "label": f"class {i}", "quality": 0.5,
             "artifacts": {"image": f"000{i}-class_{i}-image.png"}}
            for i in (2, 3)
        ],
    }  # fmt: skip
    assert cs.publish_chunk(job_id, 1, entry, ptrs) == ("published", 1, 2)
    atlas = api.c.get(f"/atlas/{job_id}").json()
    assert atlas["status"] == "running" and atlas["done"] == 2
    assert [e["index"] for e in atlas["entries"]] == [2, 3]
    assert [p["index"] for p in atlas["pending"]] == [0, 1]
    assert atlas["progress"]["classes_done"] == 2 and atlas["progress"]["percent"] == 50.0
    r = api.c.get(atlas["entries"][0]["urls"]["image"])
    assert r.status_code == 200 and r.content == b"\x89PNG\x02"  # before the atlas ends
    assert atlas["contact_sheet_url"] is None


def test_get_atlas_of_another_kind_is_404(api: Api) -> None:
    r = api.c.post("/visualize", json={"model": "tiny", "targets": [1]})
    assert_problem(api.c.get(f"/atlas/{r.json()['id']}"), 404)
    assert_problem(api.c.get("/atlas/nope"), 404)


def test_atlas_is_scoped_to_the_key_that_made_it(redis_server: Any) -> None:
    for api in make_api(redis_server, api_keys="k-one,k-two"):
        one, two = {"X-API-Key": "k-one"}, {"X-API-Key": "k-two"}
        r = api.c.post("/atlas", json={"model": "tiny", "classes": [1]}, headers=one)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert api.c.get(f"/atlas/{job_id}", headers=one).status_code == 200
        assert_problem(api.c.get(f"/atlas/{job_id}", headers=two), 404)
