"""Downloads through the API when the artifacts live in S3 (moto's server over real HTTP): the
same ETag, Content-Length and Range behaviour as with the directory store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_api import Api, make_api, submit
from test_artifacts import s3_endpoint  # noqa: F401 (the fixture)


@pytest.fixture
def s3api(redis_server: Any, s3_endpoint: str) -> Iterator[Api]:  # noqa: F811
    yield from make_api(
        redis_server,
        artifacts_url=f"s3://b-{uuid.uuid4().hex[:10]}/tivis",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_create_bucket=True,
    )


def test_s3_artifacts_download_with_etag_and_ranges(s3api: Api) -> None:
    api = s3api
    job_id = submit(api).json()["id"]
    api.store.start(job_id, 3)
    data = bytes(range(256)) * 2000
    api.stage(job_id, 1, [("big.png", data)])
    listing = [{"name": "big.png", "media_type": "image/png", "size": len(data)}]
    assert api.store.finish(job_id, 1, "succeeded", {"result": {}, "artifacts": listing})
    url = f"/jobs/{job_id}/artifacts/big.png"
    r = api.c.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data)) and r.headers["etag"].startswith('"')
    assert api.c.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    part = api.c.get(url, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    assert api.artifacts.url.startswith("s3://") and api.artifacts.list(f"{job_id}/")
