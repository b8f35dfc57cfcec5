"""The synchronous client: :class:`Client` submits jobs, :class:`Job` follows one."""

from __future__ import annotations

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


class Client:
    """``Client(url, api_key)``: the tivis service at ``url`` (default ``TIVIS_URL`` or
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, headers = settings(url, api_key)
        self.retries = retries
        self.backoff = backoff
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                 transport=transport)  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def request(self, method: str, path: str, *, retry: bool = True, **kw: Any) -> httpx.Response:
        """One request, retried (if ``retry``) on network errors and 429/502/503/504."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries or not retry
            try:
                resp = self.http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if last:
                    raise TivisError(0, f"{method} {self.url}{path}: {exc!r}") from exc
                time.sleep(retry_delay(None, attempt, self.backoff))
                continue
            if resp.status_code in RETRY_STATUSES and not last:
                time.sleep(retry_delay(resp, attempt, self.backoff))
                continue
            if resp.is_error:
                raise error_from_response(resp)
            return resp
        raise AssertionError("unreachable")

    def submit(self, path: str, **kw: Any) -> Job:
        """POST a job (JSON ``json=`` or multipart ``files=``/``data=``) with a fresh
        ``Idempotency-Key``; its retries resend the same key."""
        resp = self.request("POST", path, headers=idempotency_headers(), **kw)
        return Job(self, resp.json())

    # ------------------------------------------------------------------ job kinds

    def visualize(
        self, spec: VisualizeSpec | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Job:
        """``POST /visualize``: e.g. ``visualize(targets=["soccer ball"], method="vanilla")``."""
        return self.submit("/visualize", json=body_of(build_spec(VisualizeSpec, spec, fields)))

    def entropy_sweep(
        self, spec: SweepSpec | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Job:
        """``POST /entropy-sweep``: e.g. ``entropy_sweep(target="soccer ball")``."""
        return self.submit("/entropy-sweep", json=body_of(build_spec(SweepSpec, spec, fields)))

    def classify(
        self,
        images: Sequence[ImageInput] = (),
        spec: ClassifySpec | Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> Job:
        """``POST /classify``: uploads ``images`` (paths, bytes or ``(name, bytes)``); the spec may
        also name ``{"job", "artifact"}`` references of finished jobs."""
        checked = build_spec(ClassifySpec, spec, fields)
        return self._with_images("/classify", images, checked)

    def screen(
        self,
        image: ImageInput | None = None,
        spec: ScreenSpec | Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> Job:
        """``POST /screen``: ``screen("photo.jpg", rectangles=[{"x": 0, "y": 0, "width": 50,
        "height": 50}])``."""
        checked = build_spec(ScreenSpec, spec, fields)
        return self._with_images("/screen", [image] if image is not None else [], checked)

    def _with_images(self, path: str, images: Iterable[ImageInput], spec: Any) -> Job:
        parts = image_parts(images)
        body = json.dumps(body_of(spec))
        if not parts:
            return self.submit(path, json=body_of(spec))
        return self.submit(path, files=parts, data={"spec": body})

    # ------------------------------------------------------------------ jobs

    def job(self, job_id: str) -> Job:
        """The job ``job_id`` as it is now."""
        return Job(self, self.request("GET", f"/jobs/{job_id}").json())

    def jobs(
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
        return dict(self.request("GET", "/jobs", params=params).json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; its view (``canceled``, or still ``running`` while it stops)."""
        return dict(self.request("POST", f"/jobs/{job_id}/cancel", retry=False).json())


class Job:
    """One job: ``wait()``, then ``result``, ``download(dir)``; ``cancel()`` any time."""

    def __init__(self, client: Client, data: Mapping[str, Any]) -> None:
        self.client = client
        self.data: dict[str, Any] = dict(data)
        self.id = str(data["id"])
        self.kind = str(data.get("kind"))

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.kind!r}, status={self.status!r})"

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Job:
        self.data = dict(self.client.request("GET", f"/jobs/{self.id}").json())
        return self

    def wait(
        self, progress: bool = False, *, timeout: float | None = None, stream: IO[str] | None = None
    ) -> Job:
        """Until the job ends, following ``/jobs/<id>/events`` (Server-Sent Events); with
        ``progress`` a progress bar on ``stream`` (stderr). A broken stream is reopened (and
        the job polled meanwhile). ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(f"{self.kind} {self.id[:8]}", stream) if progress else None
        while not self.done:
            try:
                self._follow(bar, deadline)
            except (httpx.TransportError, TivisError):
                time.sleep(0.5)
                self.refresh()
            if deadline is not None and time.monotonic() > deadline and not self.done:
                raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
            if not self.done:
                self.refresh()
        if bar is not None:
            bar.close(self.status)
        return self

    def _follow(self, bar: ProgressBar | None, deadline: float | None) -> None:
        parser = SSEParser()
        timeout = httpx.Timeout(10.0, read=60.0)  # the stream sends a keep-alive every 15 s
        with self.client.http.stream("GET", f"/jobs/{self.id}/events", timeout=timeout) as resp:
            if resp.is_error:
                resp.read()
                raise error_from_response(resp)
            for line in resp.iter_lines():
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
        """The result of a succeeded job (fetched if not known yet); :class:`JobFailed` if it
        failed or was canceled."""
        if not self.done or "result" not in self.data:
            self.refresh()
        return job_result(self.data)

    def download(self, directory: str | Path) -> list[Path]:
        """Write every artifact (PNG, JSON) into ``directory``; returns the paths written."""
        if not self.done or "artifacts" not in self.data:
            self.refresh()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, url in artifact_list(self.data):
            path = out / safe_name(name)
            path.write_bytes(self.client.request("GET", url).content)
            paths.append(path)
        return paths

    def cancel(self) -> Job:
        self.data = self.client.cancel(self.id)
        return self
