"""Artifact downloads streamed from the artifact store: ``ETag``, ``Content-Length``, single
byte ranges (``Range: bytes=a-b`` -> 206 with ``Content-Range``; unsatisfiable -> 416),
``If-None-Match`` -> 304. The one place that turns a published artifact pointer into a response.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.problems import Problem
from core.artifacts import ArtifactStore, ArtifactStoreError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(start, end)`` inclusive for one satisfiable range, ``None`` for no (or an ignored,
    multi-part or malformed) range, ``"unsatisfiable"`` for a range outside the object."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None  # RFC 9110: a server may ignore a Range it does not understand
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":  # the last b bytes
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if start >= size or (b != "" and int(b) < start):
        return "unsatisfiable"
    return start, end


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


async def artifact_response(
    request: Request,
    store: ArtifactStore,
    ptr: Mapping[str, Any],
    name: str,
    *,
    download: bool = False,
    cache_control: str = "public, max-age=86400, immutable",
    vary: str | None = None,
) -> Response:
    """Stream the artifact ``ptr`` points at. A store failure is a 503 problem, a file gone
    from the store (expired) a 404."""
    key, media = str(ptr["key"]), str(ptr.get("media_type") or "application/octet-stream")
    try:
        info = await anyio.to_thread.run_sync(store.stat, key)
    except ArtifactStoreError as exc:
        raise Problem(503, "artifact-store-unavailable", str(exc)) from exc
    if info is None:
        raise Problem(404, "artifact-not-found", f"artifact {name!r} expired from the store")
    headers = {"ETag": info.etag, "Accept-Ranges": "bytes", "Cache-Control": cache_control}
    if vary:
        headers["Vary"] = vary
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    if _matches(request.headers.get("if-none-match"), info.etag):
        return Response(status_code=304, headers=headers)
    rng = parse_range(request.headers.get("range"), info.size)
    if request.headers.get("if-range") not in (None, info.etag):
        rng = None  # the client's copy is stale: send it all
    if rng == "unsatisfiable":
        return Response(
            status_code=416, headers={**headers, "Content-Range": f"bytes */{info.size}"}
        )
    start, end, status = 0, info.size - 1, 200
    if isinstance(rng, tuple):
        start, end, status = rng[0], rng[1], 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    if request.method == "HEAD" or info.size == 0:
        return Response(status_code=status, headers=headers, media_type=media)
    try:
        chunks = await anyio.to_thread.run_sync(
            lambda: store.stream(key, start, end if status == 206 else None)
        )
    except ArtifactStoreError as exc:
        raise Problem(503, "artifact-store-unavailable", str(exc)) from exc

    def body() -> Iterator[bytes]:
        yield from chunks

    return StreamingResponse(body(), status_code=status, headers=headers, media_type=media)
