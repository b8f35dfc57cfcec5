"""The job store's key lifetimes on a real Redis server: a job's record, uploads and artifact
pointers get their TTL anew as the job starts and as it ends, and a progress write never brings
back a record that expired."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from integration.harness import new_prefix

from core.store import _CREATE, JobStore

TTL = 3600


@pytest.fixture
def store(redis_server: Any) -> Iterator[JobStore]:
    prefix = new_prefix("store")
    s = JobStore(redis_server.client(), prefix, TTL)
    yield s
    keys = list(s.r.scan_iter(match=f"{prefix}:*"))
    if keys:
        s.r.delete(*keys)


def _create(store: JobStore, job_id: str, uploads: dict[str, bytes] | None = None) -> None:
    """A queued job as the API writes it (``AsyncJobStore.create``'s Lua step)."""
    keys, args = store._create_args(job_id, "classify", {}, None, time.time(), None, None, uploads)
    store.r.register_script(_CREATE)(keys=keys, args=args)


def _nearly_expired(store: JobStore, *keys: str) -> None:
    """As if most of the TTL had passed since the keys were written."""
    for key in keys:
        assert store.r.expire(key, 5), key


def _ttls(store: JobStore, *keys: str) -> list[int]:
    return [int(store.r.ttl(key)) for key in keys]


def test_start_and_finish_renew_the_ttl_of_the_job_and_its_keys(store: JobStore) -> None:
    k = store.keys
    _create(store, "j1", uploads={"a.png": b"png"})
    record, uploads, artifacts = k.job("j1"), k.uploads("j1"), k.artifacts("j1")
    _nearly_expired(store, record, uploads)
    assert store.start("j1", 3, "w1") == ("run", "1")
    assert all(t > TTL - 60 for t in _ttls(store, record, uploads)), _ttls(store, record, uploads)
    store.stage_artifacts("j1", 1, [("r.json", b"{}")])
    _nearly_expired(store, record, uploads)
    assert store.finish("j1", 1, "succeeded", {})
    ttls = _ttls(store, record, uploads, artifacts)
    assert all(t > TTL - 60 for t in ttls), ttls
    assert store.artifact_names("j1") == ["r.json"]


def test_progress_does_not_bring_back_an_expired_record(store: JobStore) -> None:
    _create(store, "j2")
    assert store.start("j2", 3, "w1") == ("run", "1")
    assert store.progress("j2", {"step": 1}, attempt=1) is False
    store.r.delete(store.keys.job("j2"))  # the record expired while the job ran
    assert store.progress("j2", {"step": 2}, attempt=1) is True  # stop: the job is gone
    assert store.progress("j2", {"step": 3}) is True
    assert not store.r.exists(store.keys.job("j2"))
    assert not store.finish("j2", 1, "succeeded", {})
    assert not store.r.exists(store.keys.job("j2"))
