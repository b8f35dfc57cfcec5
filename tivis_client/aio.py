"""The asynchronous twin of ``tivis_client.client``: :class:`AsyncClient`, :class:`AsyncJob`
(the same methods, awaited; ``result`` reads what :meth:`AsyncJob.wait` fetched)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from specs import SweepSpec, VisualizeSpec
from specs.classify import ClassifySpec, ScreenSpec
from tivis_client._common import (
    RETRY_STATUSES,
    TERMINAL,
    ImageInput,
    ProgressBar,
    SSEParser,
    TivisError,
    artifact_list,
    body_of,
    build_spec,
    error_from_response,
    idempotency_headers,
    image_parts,
    job_result,
    retry_delay,
    safe_name,
    settings,
)


class AsyncClient:
    """``AsyncClient(url, api_key)``: the tivis service at ``url`` (default ``TIVIS_URL`` or
    http://127.0.0.1:8000) with ``api_key`` (default ``TIVIS_API_KEY``).

    Submissions (:meth:`visualize`, :meth:`entropy_sweep`, :meth:`classify`, :meth:`screen`)
    take the shared spec models (``specs``), a dict, or keyword fields, validate them before
    sending, and are retried on network errors and 429/502/503/504 with one ``Idempotency-Key``
    per call, so a retried submission creates one job. Errors raise :class:`TivisError` with the
    service's problem+json (``detail``, ``errors``, ``fields``).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, headers = settings(url, api_key)
        self.retries = retries
        self.backoff = backoff
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                 transport=transport)  # fmt: skip

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    async def request(
        self, method: str, path: str, *, retry: bool = True, **kw: Any
    ) -> httpx.Response:
        """One request, retried (if ``retry``) on network errors and 429/502/503/504."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries or not retry
            try:
                resp = await self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if last:
                    raise TivisError(0, f"{method} {self.url}{path}: {exc!r}") from exc
                await asyncio.sleep(retry_delay(None, attempt, self.backoff))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                await asyncio.sleep(retry_delay(resp, attempt, self.backoff))
                continue
            if resp.is_error:
                raise error_from_response(resp)
            return resp
        raise AssertionError("unreachable")

    async def submit(self, path: str, **kw: Any) -> AsyncJob:
        """POST a job (JSON ``json=`` or multipart ``files=``/``data=``) with a fresh
        ``Idempotency-Key``; its retries resend the same key."""
        resp = await self.request("POST", path, headers=idempotency_headers(), **kw)
        return AsyncJob(self, resp.json())

    # ------------------------------------------------------------------ job kinds

    async def visualize(
        self, spec: VisualizeSpec | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AsyncJob:
        """``POST /visualize``: e.g. ``visualize(targets=["soccer ball"], method="vanilla")``."""
        return await self.submit(
            "/visualize", json=body_of(build_spec(VisualizeSpec, spec, fields))
        )

    async def entropy_sweep(
        self, spec: SweepSpec | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> AsyncJob:
        """``POST /entropy-sweep``: e.g. ``entropy_sweep(target="soccer ball")``."""
        return await self.submit(
            "/entropy-sweep", json=body_of(build_spec(SweepSpec, spec, fields))
        )

    async def classify(
        self,
        images: Sequence[ImageInput] = (),
        spec: ClassifySpec | Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> AsyncJob:
        """``POST /classify``: uploads ``images`` (paths, bytes or ``(name, bytes)``); the spec may
        also name ``{"job", "artifact"}`` references of finished jobs."""
        checked = build_spec(ClassifySpec, spec, fields)
        return await self._with_images("/classify", images, checked)

    async def screen(
        self,
        image: ImageInput | None = None,
        spec: ScreenSpec | Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> AsyncJob:
        """``POST /screen``: ``screen("photo.jpg", rectangles=[{"x": 0, "y": 0, "width": 50,
        "height": 50}])``."""
        checked = build_spec(ScreenSpec, spec, fields)
        return await self._with_images("/screen", [image] if image is not None else [], checked)

    async def _with_images(self, path: str, images: Iterable[ImageInput], spec: Any) -> AsyncJob:
        parts = image_parts(images)
        body = json.dumps(body_of(spec))
        if not parts:
            return await self.submit(path, json=body_of(spec))
        return await self.submit(path, files=parts, data={"spec": body})

    # ------------------------------------------------------------------ jobs

    async def job(self, job_id: str) -> AsyncJob:
        """The job ``job_id`` as it is now."""
        return AsyncJob(self, (await self.request("GET", f"/jobs/{job_id}")).json())

    async def jobs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        kind: str | Sequence[str] | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """``GET /jobs``: ``{"items": [...], "next_cursor": ...}``, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if kind:
            params["kind"] = [kind] if isinstance(kind, str) else list(kind)
        if cursor:
            params["cursor"] = cursor
        return dict((await self.request("GET", "/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; its view (``canceled``, or still ``running`` while it stops)."""
        resp = await self.request("POST", f"/jobs/{job_id}/cancel", retry=False)
        return dict(resp.json())


class AsyncJob:
    """One job: ``wait()``, then ``result``, ``download(dir)``; ``cancel()`` any time."""

    def __init__(self, client: AsyncClient, data: Mapping[str, Any]) -> None:
        self.client = client
        self.data: dict[str, Any] = dict(data)
        self.id = str(data["id"])
        self.kind = str(data.get("kind"))

    def __repr__(self) -> str:
        return f"AsyncJob(id={self.id!r}, kind={self.kind!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    async def refresh(self) -> AsyncJob:
        self.data = dict((await self.client.request("GET", f"/jobs/{self.id}")).json())
        return self

    async def wait(
        self, progress: bool = False, *, timeout: float | None = None, stream: IO[str] | None = None
    ) -> AsyncJob:
        """Until the job ends, following ``/jobs/<id>/events`` (Server-Sent Events); with
        ``progress`` a progress bar on ``stream`` (stderr). A broken stream is reopened (and
        the job polled meanwhile). ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"{self.kind} {self.id[:8]}", stream) if progress else None
        while not self.done:
            try:
                await self._follow(bar, deadline)
            except (httpx.TransportError, TivisError):
                await asyncio.sleep(0.5)
                await self.refresh()
            if deadline is not None and time.monotonic() > deadline and not self.done:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
            if not self.done:
                await self.refresh()
        if bar is not None:
            bar.close(self.status)
        return self

    async def _follow(self, bar: ProgressBar | None, deadline: float | None) -> None:
        parser = SSEParser()
        timeout = httpx.Timeout(10.0, read=60.0)  # the stream sends a keep-alive every 15 s
        async with self.client.http.stream(
            "GET", f"/jobs/{self.id}/events", timeout=timeout
        ) as resp:
            if resp.is_error:
                await resp.aread()
                raise error_from_response(resp)
            async for line in resp.aiter_lines():
                for event, data in parser.feed(line):
                    if event == "status" and isinstance(data, dict):
                        self.data["status"] = data.get("status")
                        if bar is not None:
                            bar.update(status=self.status)
                    elif event == "progress" and isinstance(data, dict):
                        self.data["progress"] = data
                        if bar is not None:
                            bar.update(data, self.status)
                    elif event == "end" and isinstance(data, dict):
                        self.data = data
                        return
                if deadline is not None and time.monotonic() > deadline:
                    return

    @property
    def result(self) -> dict[str, Any]:
        """The result of a succeeded job, as :meth:`wait` (or :meth:`refresh`) fetched it;
        :class:`JobFailed` if it failed or was canceled."""
        return job_result(self.data)

    async def download(self, directory: str | Path) -> list[Path]:
        """Write every artifact (PNG, JSON) into ``directory``; returns the paths written."""
        if not self.done or "artifacts" not in self.data:
            await self.refresh()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, url in artifact_list(self.data):
            path = out / safe_name(name)
            path.write_bytes((await self.client.request("GET", url)).content)
            paths.append(path)
        return paths

    async def cancel(self) -> AsyncJob:
        self.data = await self.client.cancel(self.id)
        return self
