"""Classify and screen through the whole job path: multipart upload to the real app, the job
record and its uploaded bytes in a real Redis, a real Celery worker running the real default
model, results read back over HTTP. Nothing mocked; polling with deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from photos import photo
from test_service import QUICK, Service, running_service

pytestmark = pytest.mark.integration
CATS = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def service(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(redis_server, models_dir, tmp_path_factory.mktemp("debug-svc")) as svc:
        yield svc


def upload(service: Service, path: str, files: dict[str, bytes], spec: str | None) -> str:
    parts: list[tuple[str, tuple[str | None, bytes, str]]] = [
        ("images", (name, data, "image/png")) for name, data in files.items()
    ]
    if spec is not None:
        parts.append(("spec", (None, spec.encode(), "application/json")))
    r = service.c.post(path, files=parts)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def succeeded(service: Service, job_id: str, timeout: float = 180) -> dict[str, Any]:
    job = service.wait_status(job_id, {"succeeded", "failed", "canceled"}, timeout)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["percent"] == 100.0
    return job


@pytest.mark.slow
def test_classify_a_photo_with_the_default_model_through_the_queue(service: Service) -> None:
    job_id = upload(service, "/classify", {"chelsea.png": photo("chelsea.png")}, None)
    job = succeeded(service, job_id)
    res = job["result"]
    assert job["params"] == {"webhook": None, "models": ["efficientnet_lite0"], "top_k": 5,
                             "images": ["chelsea.png"]}  # fmt: skip
    (image,) = res["images"]
    assert (image["name"], image["width"], image["height"]) == ("chelsea.png", 451, 300)
    top5 = [p["label"] for p in image["predictions"]["efficientnet_lite0"]]
    assert len(top5) == 5 and CATS & set(top5), top5
    panel = service.png(res["panel_url"])
    assert panel.width == 224 + 2 * 8  # one column
    assert {a["name"] for a in job["artifacts"]} == {"panel.png", "classify.json"}
    # The uploaded bytes stay with the job (same TTL as its record).
    assert service.store.images(job_id, ["chelsea.png"], []) == {
        "chelsea.png": photo("chelsea.png")
    }


@pytest.mark.slow
def test_screen_the_cup_and_the_prediction_changes_through_the_queue(service: Service) -> None:
    spec = '{"rectangles": [{"x": 150, "y": 0, "width": 300, "height": 300}], "top_k": 3}'
    job_id = upload(service, "/screen", {"coffee.png": photo("coffee.png")}, spec)
    res = succeeded(service, job_id)["result"]
    (entry,) = res["models"]
    assert entry["before"][0]["label"] == "espresso"
    assert entry["top1_changed"] and entry["after"][0]["label"] != "espresso"
    assert len(entry["before"]) == len(entry["after"]) == 3
    screened = service.png(entry["screened_url"])
    assert screened.size == (600, 400)
    assert screened.getpixel((300, 150)) == (127, 127, 127)  # the model's zero
    assert service.png(res["panel_url"]).width == 2 * 224 + 3 * 8


def test_classify_the_visualization_of_a_finished_job(service: Service) -> None:
    vis_id = service.submit({**QUICK, "targets": ["soccer ball"]})
    vis = succeeded(service, vis_id)
    # The final progress keeps the last round (0-based), rounds, step and q_C (issue 5).
    prog = vis["progress"]
    assert prog["rounds"] == 9 and prog["round"] == 8, prog
    assert prog["step"] > 0 and 0.0 < prog["q_c"] <= 1.0, prog
    name = vis["result"]["targets"][0]["artifacts"]["image"]
    r = service.c.post(
        "/classify",
        json={"model": "tiny", "top_k": 3, "images": [{"job": vis_id, "artifact": name}]},
    )
    assert r.status_code == 202, r.text
    res = succeeded(service, r.json()["id"])["result"]
    (image,) = res["images"]
    assert image["name"] == f"{vis_id}/{name}"
    top = image["predictions"]["tiny"]
    assert len(top) == 3 and top[0]["p"] >= top[1]["p"] >= top[2]["p"]
    assert service.png(res["panel_url"]).width == 224 + 2 * 8
