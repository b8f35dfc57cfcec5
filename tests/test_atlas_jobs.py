"""Atlas jobs without Celery: the spec (classes, ranges, one chunk definition), the chunk runner
and the whole atlas in one process on the tiny model, the chunk bookkeeping's Lua steps against
a real Redis server, and the chunk task called in process."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError
from tinymodel import TINY_LABELS

from core.chunks import ChunkStore
from core.store import JobStore
from specs.atlas import AtlasSpec, chunk_classes, chunk_count, chunk_spec, resolve_classes
from worker.engine.models import Registry
from worker.jobs import JobContext
from worker.jobs.atlas import class_names, run_atlas, run_chunk

QUICK: dict[str, Any] = {
    "model": "tiny",
    "method": "vanilla",
    "optimizer": {"max_steps_per_round": 2},
    "views": {"count": 2},
}


def test_spec_defaults_to_invariant_plus_and_all_classes() -> None:
    spec = AtlasSpec()
    assert spec.method == "invariant+" and spec.param.kind == "fourier" and spec.classes is None
    assert resolve_classes(spec, TINY_LABELS) == (list(range(10)), [])
    assert AtlasSpec(method="vanilla").param.kind == "pixel"


def test_classes_lists_ranges_and_names_in_class_order_once() -> None:
    spec = AtlasSpec(classes="7, 0-2, Soccer Ball, 1")
    assert resolve_classes(spec, TINY_LABELS) == ([0, 1, 2, 7, 9], [])
    spec = AtlasSpec(classes=[3, "5-6"])
    assert resolve_classes(spec, TINY_LABELS)[0] == [3, 5, 6]
    _, bad = resolve_classes(AtlasSpec(classes=[12, "0-20", "nope"]), TINY_LABELS)
    assert [pos for pos, _ in bad] == [0, 1, 2]
    # "²".isdigit() is true and int() refuses it; 5,000 digits are no index either
    _, bad = resolve_classes(AtlasSpec(classes=["²", "1" * 5000, "007"]), TINY_LABELS)
    assert [pos for pos, _ in bad] == [0, 1] and "out of range" in bad[1][1]
    # ranges of any length: past the last class, not "no class"
    big = ["0-99999999999", "3-" + "9" * 5000, "0000000000005-0000000000007"]
    found, bad = resolve_classes(AtlasSpec(classes=big), TINY_LABELS)
    assert found == [5, 6, 7] and [pos for pos, _ in bad] == [0, 1]
    assert all("goes past the last class 9" in msg for _, msg in bad)


@pytest.mark.parametrize("classes", ["", [], "5-2", [-1], [" "], "99999999999999-3"])
def test_bad_classes_are_refused(classes: Any) -> None:
    with pytest.raises(ValidationError):
        AtlasSpec(classes=classes)


def test_one_chunk_definition() -> None:
    classes = [0, 1, 2, 7, 9]
    assert chunk_count(5, 2) == 3
    assert [chunk_classes(classes, 2, i) for i in range(3)] == [[0, 1], [2, 7], [9]]
    with pytest.raises(ValueError):
        chunk_classes(classes, 2, 3)
    spec = AtlasSpec(**QUICK, classes="0-4", chunk_size=2)
    vis = chunk_spec(spec, [2, 7])
    assert vis.targets == [2, 7] and vis.model == "tiny" and vis.method == "vanilla"
    assert vis.optimizer.max_steps_per_round == 2 and vis.views.count == 2


def test_run_chunk_names_files_by_class(models_dir: Path) -> None:
    spec = AtlasSpec(**QUICK, classes=[3, 9])
    out = run_chunk(spec, [3, 9], JobContext(Registry(models_dir=models_dir), device="cpu"))
    names = sorted(a.name for a in out.artifacts)
    want = sorted(n for i in (3, 9) for n in class_names(i, TINY_LABELS[i]).values())
    assert names == want and "0009-soccer_ball-image.png" in names
    entries = out.result["classes"]
    assert [e["index"] for e in entries] == [3, 9]
    assert all(0.0 <= e["quality"] <= 1.0 for e in entries)
    report = json.loads(
        next(a.data for a in out.artifacts if a.name.endswith("0003-class_3-report.json"))
    )
    assert (
        report["target"]["index"] == 3 and report["artifacts"]["image"] == "0003-class_3-image.png"
    )


def test_run_atlas_in_one_process(models_dir: Path) -> None:
    spec = AtlasSpec(**QUICK, classes="0-4", chunk_size=2)
    calls: list[tuple[int, int]] = []
    ctx = JobContext(Registry(models_dir=models_dir), device="cpu",
                     progress=lambda r, n, s, q: calls.append((r, n)))  # fmt: skip
    out = run_atlas(spec, ctx)
    by_name = {a.name: a for a in out.artifacts}
    index = json.loads(by_name["index.json"].data)
    assert [e["index"] for e in index["entries"]] == [0, 1, 2, 3, 4] and index["classes"] == 5
    sheet = Image.open(io.BytesIO(by_name["contact-sheet.png"].data))
    assert sheet.size[0] >= 64 * 3
    assert len([n for n in by_name if n.endswith("-image.png")]) == 5
    assert calls and calls[-1][0] <= calls[-1][1]


# -- chunk bookkeeping (Lua) against a real Redis ------------------------------------------------
@pytest.fixture
def stores(redis_server: Any) -> tuple[JobStore, ChunkStore]:
    from integration.harness import new_prefix

    prefix = new_prefix("chunks")
    client = redis_server.client()
    return JobStore(client, prefix, 3600), ChunkStore(client, prefix, 3600)


def create_job(
    store: JobStore, job_id: str, kind: str, spec: dict[str, Any], extra: Any = None
) -> None:
    """A queued job record, written by the same Lua step the API uses (no broker message)."""
    import time

    from core.store import _CREATE

    keys, args = store._create_args(job_id, kind, spec, None, time.time(), extra)
    store.r.register_script(_CREATE)(keys=keys, args=args)


def _entry(i: int, classes: list[int]) -> dict[str, Any]:
    return {
        "chunk": i,
        "classes": [{"index": c, "label": str(c), "artifacts": {}} for c in classes],
    }


def test_chunks_publish_once_and_move_progress(stores: tuple[JobStore, ChunkStore]) -> None:
    jobs, cs = stores
    create_job(jobs, "a1", "atlas", {"model": "tiny"})
    assert jobs.start("a1", 3, "w1") == ("run", "1")
    assert jobs.running_jobs() == {"a1": "w1"}
    assert cs.plan("a1", [0, 1, 2], 2)
    assert jobs.running_jobs() == {}  # no single worker holds a fanned-out job (reaper)
    assert jobs.get("a1")["progress"]["classes"] == 3  # type: ignore[index]
    assert cs.start_chunk("a1", 0, 3) == ("run", "1")
    assert cs.start_chunk("a1", 0, 3) == ("run", "2")  # a redelivery counts
    ptr = {"key": "a1/c0/x.png", "media_type": "image/png", "size": 1, "etag": '"e"'}
    assert cs.publish_chunk("a1", 0, _entry(0, [0, 1]), {"x.png": ptr}) == ("published", 1, 2)
    assert cs.publish_chunk("a1", 0, _entry(0, [0, 1]), {"x.png": ptr})[0] == "superseded"  # once
    assert cs.start_chunk("a1", 0, 3) == ("done", "")  # never redone
    prog = jobs.get("a1")["progress"]  # type: ignore[index]
    assert prog["classes_done"] == 2 and prog["percent"] == pytest.approx(66.7)
    assert jobs.artifact("a1", "x.png") == ptr
    assert cs.publish_chunk("a1", 1, _entry(1, [2]), {}) == ("published", 2, 2)
    assert [e["index"] for e in cs.entries("a1")] == [0, 1, 2]
    assert cs.end("a1", "succeeded", {"result": {"ok": 1}})
    assert not cs.end("a1", "failed", {})  # ended once
    assert jobs.get("a1")["status"] == "succeeded"  # type: ignore[index]
    assert cs.start_chunk("a1", 1, 3) == ("finished", "succeeded")


def test_the_api_reads_entries_and_progress_as_of_one_moment(
    stores: tuple[JobStore, ChunkStore], redis_server: Any
) -> None:
    """While chunks publish, every read of the atlas has exactly as many entries as its progress
    counts (read apart, a chunk published between the reads gave entries not counted yet)."""
    import threading

    import redis.asyncio as aredis
    from integration.harness import run_async

    from core.chunks import atlas_snapshot

    jobs, cs = stores
    n = 60
    create_job(jobs, "s1", "atlas", {"model": "tiny"})
    assert jobs.start("s1", 3, "w1") == ("run", "1")
    assert cs.plan("s1", list(range(n)), n)
    prefix = jobs.keys.prefix

    def publish() -> None:
        for i in range(n):
            assert cs.publish_chunk("s1", i, _entry(i, [i]), {})[0] == "published"

    async def watch() -> list[tuple[int, int]]:
        client = aredis.Redis.from_url(redis_server.url)
        seen: list[tuple[int, int]] = []
        try:
            while not seen or seen[-1][0] < n:
                entries, rec = await atlas_snapshot(client, prefix, "s1")
                assert rec is not None
                seen.append((len(entries), int(rec["progress"]["classes_done"])))
        finally:
            await client.aclose()
        return seen

    writer = threading.Thread(target=publish)
    writer.start()
    try:
        seen = run_async(watch())
    finally:
        writer.join()
    assert all(done == counted for done, counted in seen), seen
    assert len({done for done, _ in seen}) > 2  # it did watch the chunks arrive


def test_chunk_start_sees_cancel_and_counts_attempts(stores: tuple[JobStore, ChunkStore]) -> None:
    jobs, cs = stores
    create_job(jobs, "b1", "atlas", {})
    jobs.start("b1", 3)
    cs.plan("b1", [0, 1], 2)
    assert cs.start_chunk("b1", 0, 1) == ("run", "1")
    assert cs.start_chunk("b1", 0, 1) == ("exhausted", "1")
    rec = jobs.get("b1")
    assert rec is not None and rec["status"] == "failed" and "chunk 0" in rec["error"]["message"]
    hist = jobs.keys.duration("atlas")
    assert jobs.r.hget(hist, "count") == b"1"  # the start that ended it counted its run time
    assert cs.start_chunk("b1", 1, 1) == ("finished", "failed")
    assert jobs.r.hget(hist, "count") == b"1"  # a start that finds it ended counts nothing
    create_job(jobs, "b2", "atlas", {})
    jobs.start("b2", 3)
    cs.plan("b2", [0, 1], 2)
    jobs.r.hset(jobs.keys.job("b2"), "cancel_requested", "1")  # what POST .../cancel does
    assert cs.start_chunk("b2", 1, 3) == ("canceled", "running")
    assert jobs.get("b2")["status"] == "canceled"  # type: ignore[index]
    assert jobs.r.hget(hist, "count") == b"2"
    assert cs.publish_chunk("b2", 1, _entry(1, [1]), {})[0] == "superseded"


def test_a_cancel_before_a_publish_ends_the_atlas_once(stores: tuple[JobStore, ChunkStore]) -> None:
    """A cancel that lands after a chunk's last cancel check: its publish publishes nothing and
    ends the atlas ``canceled`` in the same step (no worker holds a fanned-out atlas, so nothing
    else would end it); a chunk racing it finds the atlas ended."""
    jobs, cs = stores
    create_job(jobs, "c1", "atlas", {})
    jobs.start("c1", 3)
    cs.plan("c1", [0, 1, 2, 3], 2)
    assert cs.start_chunk("c1", 0, 3) == ("run", "1")
    assert cs.start_chunk("c1", 1, 3) == ("run", "1")
    jobs.r.hset(jobs.keys.job("c1"), "cancel_requested", "1")  # what POST .../cancel does
    ptr = {"key": "c1/c1/x.png", "media_type": "image/png", "size": 1, "etag": '"e"'}
    assert cs.publish_chunk("c1", 1, _entry(1, [2, 3]), {"x.png": ptr}) == ("canceled", 0, 2)
    assert cs.publish_chunk("c1", 0, _entry(0, [0, 1]), {}) == ("superseded", 0, 2)
    rec = jobs.get("c1")
    assert rec is not None and rec["status"] == "canceled" and rec["finished_at"]
    assert cs.done_chunks("c1") == {} and jobs.artifact_names("c1") == []
    assert jobs.r.hget(jobs.keys.total, "atlas|canceled") == b"1"  # ended once
    assert jobs.r.hget(jobs.keys.current, "atlas|running") == b"0"
    assert jobs.r.hget(jobs.keys.duration("atlas"), "count") == b"1"  # its run time counted
    assert not cs.end("c1", "failed", {})


# -- the chunk task, in process (no broker) ------------------------------------------------------
HOOK = {"url": "https://example.com/hook", "events": ["succeeded", "failed", "canceled"]}


@pytest.fixture
def in_process(
    redis_server: Any, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[JobStore, ChunkStore]]:
    """The worker's chunk task called in process against a real Redis server, a directory
    artifact store and the tiny model. A chunk never checks for a cancel while it runs (the
    check interval is an hour): a cancel requested after its start lands after its last check."""
    from inprocess import worker_env
    from integration.harness import new_prefix

    from worker import atlas_tasks

    prefix = new_prefix("atlas")
    monkeypatch.setattr(atlas_tasks, "_chunk_stores", {})  # the process's, on this prefix
    client = redis_server.client()
    with worker_env(monkeypatch, redis_server.url, prefix, str(tmp_path / "artifacts"),
                    models_dir, cancel_check_seconds="3600"):  # fmt: skip
        yield JobStore(client, prefix, 3600), ChunkStore(client, prefix, 3600)


def _running_atlas(
    jobs: JobStore, cs: ChunkStore, job_id: str, classes: list[int], size: int
) -> None:
    spec = {**QUICK, "optimizer": {"max_total_steps": 2}, "views": {"count": 1},
            "classes": classes, "chunk_size": size, "webhook": HOOK}  # fmt: skip
    create_job(jobs, job_id, "atlas", spec, extra={"atlas_classes": json.dumps(classes)})
    assert jobs.start(job_id, 3) == ("run", "1")
    assert cs.plan(job_id, classes, chunk_count(len(classes), size))


def _hook_events(jobs: JobStore, job_id: str) -> list[str]:
    from core.webhooks import deliveries_key, shown_deliveries

    raw = jobs.r.hgetall(deliveries_key(jobs.keys.prefix, job_id))
    return [e["event"] for e in shown_deliveries(raw)]


def test_a_cancel_landing_before_the_last_publish_ends_the_atlas(
    in_process: tuple[JobStore, ChunkStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real chunk runs, then a cancel lands (after its last cancel check, before it
    publishes): it publishes nothing, ends the atlas ``canceled`` and queues that webhook."""
    from worker import atlas_tasks

    jobs, cs = in_process
    _running_atlas(jobs, cs, "d1", [0, 1], 2)  # one chunk: the last one

    def then_cancel(spec: AtlasSpec, classes: list[int], ctx: JobContext) -> Any:
        out = run_chunk(spec, classes, ctx)  # the real chunk; then the cancel lands
        jobs.r.hset(jobs.keys.job("d1"), "cancel_requested", "1")  # what POST .../cancel does
        return out

    monkeypatch.setattr(atlas_tasks, "run_chunk", then_cancel)
    assert atlas_tasks.run_chunk_task("d1", 0) == "canceled"
    rec = jobs.get("d1")
    assert rec is not None and rec["status"] == "canceled"
    assert _hook_events(jobs, "d1") == ["canceled"]
    assert cs.done_chunks("d1") == {} and jobs.artifact_names("d1") == []
    assert not any(p.is_file() for p in (tmp_path / "artifacts").rglob("*"))  # its own files too
    assert atlas_tasks.run_chunk_task("d1", 0) == "finished"  # a redelivery does nothing


def test_an_atlas_ended_by_a_chunk_start_sends_its_webhook(
    in_process: tuple[JobStore, ChunkStore],
) -> None:
    from worker.atlas_tasks import run_chunk_task

    jobs, cs = in_process
    _running_atlas(jobs, cs, "e1", [0, 1, 2, 3], 2)
    jobs.r.hset(jobs.keys.job("e1"), "cancel_requested", "1")  # canceled while chunks queue
    assert run_chunk_task("e1", 0) == "canceled"
    assert run_chunk_task("e1", 1) == "finished"
    assert jobs.get("e1")["status"] == "canceled"  # type: ignore[index]
    assert _hook_events(jobs, "e1") == ["canceled"]
    _running_atlas(jobs, cs, "e2", [0, 1, 2, 3], 2)
    jobs.r.hset(jobs.keys.chunk_attempts("e2"), "0", "3")  # its workers were lost 3 times
    assert run_chunk_task("e2", 0) == "exhausted"
    rec = jobs.get("e2")
    assert rec is not None and rec["status"] == "failed"
    assert rec["error"]["type"] == "TooManyAttempts"
    assert _hook_events(jobs, "e2") == ["failed"]
