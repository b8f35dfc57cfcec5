"""A failing artifact store fails the job clearly and publishes nothing: the worker's task code,
called in process against a real Redis server, with an artifact directory that cannot exist
(its parent is a file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_atlas_jobs import create_job

from core.chunks import ChunkStore
from core.store import JobStore

QUICK = {"model": "tiny", "method": "vanilla", "optimizer": {"max_steps_per_round": 2},
         "views": {"count": 1}}  # fmt: skip


@pytest.fixture
def broken(
    redis_server: Any, models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[JobStore]:
    from inprocess import worker_env
    from integration.harness import new_prefix

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    prefix = new_prefix("broken")
    with worker_env(monkeypatch, redis_server.url, prefix, str(blocker / "artifacts"),
                    models_dir, max_attempts="1"):  # fmt: skip
        yield JobStore(redis_server.client(), prefix, 3600)


def test_store_error_fails_a_job_clearly(broken: JobStore) -> None:
    from worker.tasks import run_job

    create_job(broken, "j1", "visualize", {**QUICK, "targets": [1]})
    assert run_job("j1") == "failed"
    rec = broken.get("j1")
    assert rec is not None and rec["status"] == "failed"
    assert rec["error"]["type"] == "ArtifactStoreError"
    assert "could not write artifact" in rec["error"]["message"]
    assert broken.artifact_names("j1") == [] and rec["artifacts"] in (None, [])


def test_store_error_fails_an_atlas_chunk_clearly(broken: JobStore) -> None:
    from worker.atlas_tasks import run_chunk_task

    spec = {**QUICK, "classes": "0-1", "chunk_size": 2}
    create_job(broken, "a1", "atlas", spec, extra={"atlas_classes": "[0, 1]"})
    assert broken.start("a1", 1) == ("run", "1")
    cs = ChunkStore(broken.r, broken.keys.prefix, 3600)
    assert cs.plan("a1", [0, 1], 1)
    assert run_chunk_task("a1", 0) == "failed"  # one start allowed: no retry
    rec = broken.get("a1")
    assert rec is not None and rec["status"] == "failed"
    assert rec["error"]["type"] == "ArtifactStoreError"
    assert rec["error"]["message"].startswith("chunk 0 (classes 0-1) failed: could not write")
    assert cs.done_chunks("a1") == {} and broken.artifact_names("a1") == []
