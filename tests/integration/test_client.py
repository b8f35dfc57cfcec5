"""The Python client and the ``tivis`` command line against a running service: a real Redis, a
real worker, the API as a uvicorn subprocess over HTTP (API keys on)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration.harness import (
    ROOT,
    Worker,
    api_process,
    free_port,
    new_prefix,
    run_async,
    service_env,
    wait_for,
)
from integration.test_service import LONG, QUICK, SLOW
from photos import photo

from core.settings import Settings
from core.store import JobStore
from specs import VisualizeSpec
from specs.classify import ScreenSpec
from tivis_client import AsyncClient, Client, JobFailed, TivisError

pytestmark = pytest.mark.integration
KEY = "client-test-key"
TINY = {**QUICK, "targets": ["soccer ball"]}


@dataclass
class Live:
    url: str
    store: JobStore
    env: dict[str, str]
    tmp: Path

    def client(self, **kw: Any) -> Client:
        return Client(self.url, KEY, **kw)

    def jobs_created(self) -> int:
        return int(self.store.r.zcard(self.store.keys.index))


@pytest.fixture(scope="module")
def live(
    redis_server: Any, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("client-svc")
    prefix = new_prefix("cli")
    env = service_env(redis_server.url, prefix, models_dir, TIVIS_API_KEYS=KEY)
    store = JobStore(redis_server.client(), prefix, Settings().ttl_seconds)
    worker = Worker(env, tmp / "worker.log")
    try:
        with api_process(env, tmp / "api.log", 60 * SLOW) as (url, _api):
            worker.wait_ready(store.r, prefix, timeout=180 * SLOW)
            yield Live(url, store, env, tmp)
    finally:
        worker.stop()


def test_visualize_wait_with_progress_bar_result_and_download(live: Live, tmp_path: Path) -> None:
    bar = io.StringIO()
    with live.client() as tivis:
        job = tivis.visualize(VisualizeSpec.model_validate(TINY))  # typed with the shared spec
        assert job.status == "queued" and job.kind == "visualize"
        job.wait(progress=True, timeout=180 * SLOW, stream=bar)
        assert job.status == "succeeded"
        target = job.result["targets"][0]
        assert target["target"]["label"] == "soccer ball" and len(target["top5"]) == 5
        paths = job.download(tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == sorted(a["name"] for a in job.data["artifacts"]) and len(names) == 3
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    text = bar.getvalue()
    assert "100.0% succeeded" in text and "round" in text  # fed by progress events
    assert text.count("\r") >= 2 and text.endswith("\n")


def test_entropy_sweep_classify_and_screen(live: Live) -> None:
    chelsea = photo("chelsea.png")
    with live.client() as tivis:
        sweep = tivis.entropy_sweep(model="tiny", target=3, gray_levels=[0, 128],
                                    schedule=QUICK["schedule"],
                                    optimizer=QUICK["optimizer"])  # fmt: skip
        cls = tivis.classify([("cat.png", chelsea)], models=["tiny"], top_k=3)
        rect = {"x": 0, "y": 0, "width": 100, "height": 100}
        screen = ScreenSpec.model_validate({"models": ["tiny"], "rectangles": [rect]})
        scr = tivis.screen(("cat.png", chelsea), screen)
        for job in (sweep, cls, scr):
            job.wait(timeout=180 * SLOW)
            assert job.status == "succeeded", job.data
        assert len(sweep.result["levels"]) == 2
        assert len(cls.result["images"][0]["predictions"]["tiny"]) == 3
        assert scr.result["models"][0]["before"]
        # classify an artifact of a finished job (JSON, no upload)
        png = next(a["name"] for a in sweep.data["artifacts"] if a["media_type"] == "image/png")
        ref = tivis.classify([], {"models": ["tiny"], "images": [{"job": sweep.id,
                                                                  "artifact": png}]})  # fmt: skip
        assert ref.wait(timeout=120 * SLOW).status == "succeeded"


def test_errors_carry_the_problem_detail_and_fields(live: Live) -> None:
    with live.client() as tivis:
        with pytest.raises(TivisError) as err:
            tivis.visualize(model="no_such_model", targets=[1])
        assert err.value.status == 422 and err.value.fields == ["model"]
        assert "no_such_model" in err.value.detail and err.value.problem["suggestions"] is not None
        with pytest.raises(TivisError) as err:  # refused before anything is sent
            tivis.visualize(targets=[])
        assert err.value.status == 422 and err.value.fields == ["targets"]
        with pytest.raises(TivisError) as err:
            tivis.job("nope")
        assert err.value.status == 404
    with Client(live.url, "wrong-key") as bad, pytest.raises(TivisError) as err:
        bad.jobs()
    assert err.value.status == 401 and "not valid" in err.value.detail
    down = Client(f"http://127.0.0.1:{free_port()}", KEY, retries=1, backoff=0.01)
    with down, pytest.raises(TivisError) as err:
        down.jobs()
    assert err.value.status == 0


class LoseFirstAnswer(httpx.HTTPTransport):
    """The first POST reaches the server and is answered, but the answer is lost on the way
    back (as when a connection drops): the client sees a network error and retries."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[tuple[str | None, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        if request.method == "POST":
            resp.read()
            self.posts.append((request.headers.get("idempotency-key"), resp.status_code))
            if len(self.posts) == 1:
                resp.close()
                raise httpx.ReadError("connection lost before the answer arrived", request=request)
        return resp


def test_a_retried_submission_creates_one_job(live: Live) -> None:
    before = live.jobs_created()
    transport = LoseFirstAnswer()
    with live.client(transport=transport, backoff=0.01) as tivis:
        job = tivis.visualize(TINY)
        assert len(transport.posts) == 2
        (k1, s1), (k2, s2) = transport.posts
        assert k1 == k2 and k1 and s1 == 202 and s2 == 202  # the same key, sent twice
        assert live.jobs_created() == before + 1  # one job
        listed = tivis.jobs(limit=5)["items"]
        assert listed[0]["id"] == job.id
        assert job.wait(timeout=180 * SLOW).status == "succeeded"
        # a new call is a new submission: a new key, a new job
        other = tivis.visualize(TINY)
        assert other.id != job.id and live.jobs_created() == before + 2
        other.cancel()


def test_cancel_and_the_result_of_a_canceled_job(live: Live) -> None:
    with live.client() as tivis:
        job = tivis.visualize(LONG)
        wait_for(lambda: job.refresh().status == "running", 60 * SLOW, "the job to run")
        job.cancel()
        assert job.wait(timeout=60 * SLOW).status == "canceled"
        with pytest.raises(JobFailed) as err:
            job.result  # noqa: B018
        assert err.value.job["status"] == "canceled"


def test_async_client(live: Live, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncClient(live.url, KEY) as tivis:
            job = await tivis.visualize(TINY)
            bar = io.StringIO()
            await job.wait(progress=True, timeout=180 * SLOW, stream=bar)
            assert job.status == "succeeded" and job.result["targets"]
            assert "100.0% succeeded" in bar.getvalue()
            paths = await job.download(tmp_path)
            assert len(paths) == 3
            long = await tivis.visualize(LONG)
            await long.cancel()
            assert (await long.wait(timeout=60 * SLOW)).status == "canceled"
            page = await tivis.jobs(kind="visualize", limit=3)
            assert {long.id, job.id} <= {j["id"] for j in page["items"]}
            with pytest.raises(TivisError) as err:
                await tivis.entropy_sweep(model="tiny", target="no such class")
            assert err.value.fields == ["target"]

    run_async(main())


def _tivis(
    live: Live, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIVIS_")}
    environ.update(PYTHONPATH=str(ROOT), TIVIS_URL=live.url, TIVIS_API_KEY=KEY)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "tivis_client", *args], cwd=live.tmp,
                          env=environ, capture_output=True, text=True,
                          timeout=300 * SLOW)  # fmt: skip


def test_command_line(live: Live, tmp_path: Path) -> None:
    spec = json.dumps({k: v for k, v in QUICK.items() if k != "model"})
    out = tmp_path / "out"
    r = _tivis(live, "visualize", "--target", "soccer ball", "--model", "tiny", "--spec", spec,
               "--wait", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["status"] == "succeeded" and job["params"]["targets"] == ["soccer ball"]
    assert "100.0% succeeded" in r.stderr  # the progress bar
    assert sorted(p.name for p in out.iterdir()) == sorted(a["name"] for a in job["artifacts"])

    # without --wait: the queued job; then jobs, job, cancel
    r = _tivis(live, "visualize", "--target", "1", "--spec", json.dumps(LONG))
    assert r.returncode == 0, r.stderr
    queued = json.loads(r.stdout)
    assert queued["status"] == "queued"
    r = _tivis(live, "jobs", "--limit", "5")
    assert r.returncode == 0 and queued["id"] in r.stdout and job["id"] in r.stdout
    assert r.stdout.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"]
    r = _tivis(live, "cancel", queued["id"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] in ("canceled", "running")
    r = _tivis(live, "wait", queued["id"], "--no-progress")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "canceled"

    # classify and screen with files, sweep; the URL from the option instead of the environment
    img = tmp_path / "cat.png"
    img.write_bytes(photo("chelsea.png"))
    r = _tivis(live, "--url", live.url, "classify", "--image", str(img), "--model", "tiny",
               "--wait", "--no-progress", env={"TIVIS_URL": "http://127.0.0.1:9"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["images"][0]["predictions"]["tiny"]
    r = _tivis(live, "screen", "--image", str(img), "--rect", "0,0,50,50", "--model", "tiny",
               "--wait", "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _tivis(live, "sweep", "--target", "3", "--model", "tiny", "--gray-levels", "0,255",
               "--spec", json.dumps({"schedule": QUICK["schedule"]}))  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "sweep"

    # errors: the problem's detail and field, exit status 2; no server: 3
    r = _tivis(live, "visualize", "--target", "1", "--model", "no_such_model")
    assert r.returncode == 2 and "model" in r.stderr and "422" in r.stderr
    r = _tivis(live, "jobs", env={"TIVIS_URL": f"http://127.0.0.1:{free_port()}"})
    assert r.returncode == 3


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tivis"] == "tivis_client.cli:main"
    from tivis_client.cli import main

    assert callable(main)


def test_client_imports_neither_torch_nor_fastapi() -> None:
    code = ("import sys, tivis_client, tivis_client.cli; "
            "bad = {'torch', 'fastapi', 'celery', 'redis'} & set(sys.modules); "
            "assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
