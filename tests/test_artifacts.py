"""Contract tests of the artifact store: the same tests against a directory and against S3 over
real HTTP (moto's server on a free local port; nothing is mocked inside the process)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    DirectoryStore,
    S3Store,
    open_store,
    store_from_settings,
    sweep_job,
    write_all,
)
from core.settings import Settings


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from integration.harness import free_port
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_store(endpoint: str, bucket: str | None = None, prefix: str = "pre/fix") -> S3Store:
    return S3Store(
        bucket or f"b-{uuid.uuid4().hex[:10]}",
        prefix,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        create_bucket=True,
    )


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "dir":
        return DirectoryStore(tmp_path / "artifacts")
    return s3_store(request.getfixturevalue("s3_endpoint"))


def test_put_get_stat(store: ArtifactStore) -> None:
    data = os.urandom(1000)
    info = store.put("job1/a1/x.png", data, "image/png")
    assert info.size == 1000 and info.etag.startswith('"') and info.etag.endswith('"')
    assert store.get("job1/a1/x.png") == data
    st = store.stat("job1/a1/x.png")
    assert st is not None and st.size == 1000 and st.etag == info.etag
    assert store.stat("job1/a1/nothing.png") is None
    with pytest.raises(ArtifactNotFound):
        store.get("job1/a1/nothing.png")


def test_overwrite_changes_etag(store: ArtifactStore) -> None:
    a = store.put("j/a1/r.json", b'{"a": 1}', "application/json")
    time.sleep(0.01)  # mtime-based tags of the directory store need a new timestamp
    b = store.put("j/a1/r.json", b'{"a": 22}', "application/json")
    assert a.etag != b.etag
    assert store.get("j/a1/r.json") == b'{"a": 22}'


def test_stream_whole_and_ranges(store: ArtifactStore) -> None:
    data = os.urandom(700_000)  # more than one chunk
    store.put("j/a1/big.png", data, "image/png")
    assert b"".join(store.stream("j/a1/big.png")) == data
    assert b"".join(store.stream("j/a1/big.png", 10, 19)) == data[10:20]
    assert b"".join(store.stream("j/a1/big.png", 699_990)) == data[699_990:]
    with pytest.raises(ArtifactNotFound):
        b"".join(store.stream("j/a1/none.png"))


def test_list_delete_and_sweep(store: ArtifactStore) -> None:
    for key in ("job/a1/x", "job/a2/x", "job/a2/y", "other/a1/x"):
        store.put(key, b"1", "application/octet-stream")
    assert [o.key for o in store.list("job/")] == ["job/a1/x", "job/a2/x", "job/a2/y"]
    assert sweep_job(store, "job", ["job/a2/x", "job/a2/y"]) == 1
    assert [o.key for o in store.list("job/")] == ["job/a2/x", "job/a2/y"]
    assert store.delete(["job/a2/x", "job/a2/missing"]) >= 1
    assert [o.key for o in store.list("")] == ["job/a2/y", "other/a1/x"]


def test_expire_removes_old_objects_only(store: ArtifactStore) -> None:
    store.put("old/a1/x", b"1", "application/octet-stream")
    assert store.expire(3600) == 0
    assert store.expire(3600, now=time.time() + 7200) == 1
    assert store.list("") == []


def test_write_all_gives_pointers(store: ArtifactStore) -> None:
    ptrs = write_all(
        store, "j9", "a3", [("a.png", b"png", "image/png"), ("b.json", b"{}", "application/json")]
    )
    assert ptrs["a.png"]["key"] == "j9/a3/a.png" and ptrs["a.png"]["media_type"] == "image/png"
    assert ptrs["b.json"]["size"] == 2
    assert store.get("j9/a3/b.json") == b"{}"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_are_refused(store: ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"1", "image/png")


def test_directory_store_never_leaves_half_files(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "arts")
    store.put("j/a1/x", b"1", "image/png")
    (tmp_path / "arts" / "j" / "a1" / "sub").mkdir()
    with pytest.raises(ArtifactStoreError):  # a folder where the file should go
        store.put("j/a1/sub", b"2", "image/png")
    names = sorted(p.name for p in (tmp_path / "arts" / "j" / "a1").iterdir())
    assert names == ["sub", "x"]  # no temporary file left behind


def test_write_all_cleans_up_on_error(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "arts")
    (tmp_path / "arts" / "j" / "a1" / "bad").mkdir(parents=True)
    with pytest.raises(ArtifactStoreError):
        write_all(store, "j", "a1", [("good", b"1", "image/png"), ("bad", b"2", "image/png")])
    assert [o.key for o in store.list("j/")] == []


def test_unreachable_s3_is_a_clear_error() -> None:
    from integration.harness import free_port

    store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                    access_key_id="x", secret_access_key="y")  # fmt: skip
    with pytest.raises(ArtifactStoreError, match="writing artifact"):
        store.put("j/a1/x", b"1", "image/png")


def test_missing_bucket_is_a_clear_error(s3_endpoint: str) -> None:
    store = S3Store("no-such-bucket", endpoint_url=s3_endpoint, region="us-east-1",
                    access_key_id="x", secret_access_key="y")  # fmt: skip
    with pytest.raises(ArtifactStoreError, match="no-such-bucket"):
        store.put("j/a1/x", b"1", "image/png")


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), DirectoryStore)
    d = open_store(tmp_path.as_uri())
    assert isinstance(d, DirectoryStore) and d.root == tmp_path.resolve()
    s = open_store("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s, S3Store) and s.bucket == "bucket" and s.prefix == "some/prefix/"
    with pytest.raises(ValueError):
        open_store("ftp://host/x")
    default = store_from_settings(Settings(data_dir=tmp_path))
    assert (
        isinstance(default, DirectoryStore) and default.root == (tmp_path / "artifacts").resolve()
    )
