"""What the synchronous and the asynchronous client share: errors, request bodies, retries, the
Server-Sent Events parser and the progress bar. No I/O here."""

from __future__ import annotations

import json
import mimetypes
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "tivis-client/0.1"

ImageInput = str | os.PathLike[str] | bytes | tuple[str, bytes]
"""An image to upload: a file path, raw bytes (named ``image-<n>``) or ``(name, bytes)``."""

SpecT = TypeVar("SpecT", bound=BaseModel)


class TivisError(Exception):
    """An error answer of the service (RFC 9457 problem+json) or an unreachable service.

    ``status`` (0: no answer), ``type``, ``title``, ``detail``, ``errors`` (``[{field, message}]``),
    ``fields`` (the names of the fields that were wrong) and the whole ``problem`` body.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.type = type
        self.title = title
        self.errors = list(errors or [])
        self.problem = dict(problem or {})
        super().__init__(str(self))

    @property
    def fields(self) -> list[str]:
        return [str(e.get("field")) for e in self.errors if e.get("field")]

    def __str__(self) -> str:
        head = f"{self.status} {self.title}: " if self.status else ""
        tail = "".join(f"\n  {e.get('field')}: {e.get('message')}" for e in self.errors)
        return f"{head}{self.detail}{tail}"


class JobFailed(TivisError):
    """A job ended ``failed`` or ``canceled`` where a result was asked for; ``job`` is its view."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        self.job = dict(job)
        err = job.get("error") or {}
        msg = f"job {job.get('id')} {job.get('status')}"
        if err:
            msg += f": {err.get('type')}: {err.get('message')}"
        super().__init__(0, msg, title=str(job.get("status")))


def error_from_response(resp: httpx.Response) -> TivisError:
    """The problem+json of an error answer as a :class:`TivisError`."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return TivisError(resp.status_code, resp.text[:500] or resp.reason_phrase,
                          title=resp.reason_phrase)  # fmt: skip
    return TivisError(
        resp.status_code,
        str(body.get("detail") or resp.reason_phrase),
        type=body.get("type"),
        title=body.get("title") or resp.reason_phrase,
        errors=body.get("errors") if isinstance(body.get("errors"), list) else None,
        problem=body,
    )


def validation_error(exc: ValidationError) -> TivisError:
    """A spec refused before sending, in the shape of the service's 422."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
        for e in exc.errors()
    ]
    fields = ", ".join(e["field"] for e in errors)
    return TivisError(422, f"invalid spec: {fields}", title="Request validation failed",
                      errors=errors)  # fmt: skip


def build_spec(
    model: type[SpecT], spec: SpecT | Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> SpecT:
    """``spec`` (a model or a dict) with ``fields`` on top, validated by the shared spec model."""
    base: dict[str, Any] = {}
    if isinstance(spec, BaseModel):
        base = spec.model_dump(mode="json", exclude_unset=True)
    elif spec is not None:
        base = dict(spec)
    try:
        return model.model_validate({**base, **{k: v for k, v in fields.items()
                                                if v is not None}})  # fmt: skip
    except ValidationError as exc:
        raise validation_error(exc) from None


def body_of(spec: BaseModel) -> dict[str, Any]:
    """The JSON body of a spec: only what was set, so the service's defaults apply."""
    return spec.model_dump(mode="json", exclude_unset=True)


def settings(url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """Base URL and headers: arguments first, then ``TIVIS_URL`` / ``TIVIS_API_KEY``."""
    base = (url or os.environ.get("TIVIS_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("TIVIS_API_KEY")
    headers = {"user-agent": USER_AGENT}
    if key:
        headers["x-api-key"] = key
    return base, headers


def idempotency_headers() -> dict[str, str]:
    """A new key per submission; the retries of that submission resend the same one."""
    return {"Idempotency-Key": f"tivis-client-{uuid.uuid4().hex}"}


def retry_delay(resp: httpx.Response | None, attempt: int, backoff: float) -> float:
    """Seconds before retry ``attempt`` (0-based): ``Retry-After`` if given (at most 30 s),
    else exponential."""
    if resp is not None:
        after = resp.headers.get("retry-after")
        if after and after.isascii() and after.isdigit():
            return min(float(after), 30.0)
    return float(backoff * (2**attempt))


def image_parts(images: Iterable[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file parts named ``images`` (the service reads each file name as the image's
    name)."""
    parts = []
    for i, img in enumerate(images):
        if isinstance(img, tuple):
            name, data = img
        elif isinstance(img, bytes | bytearray):
            name, data = f"image-{i}", bytes(img)
        else:
            path = Path(img)
            name, data = path.name, path.read_bytes()
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts.append(("images", (name, data, media)))
    return parts


def upload_names(images: Iterable[ImageInput]) -> list[str]:
    return [p[1][0] for p in image_parts(images)]


class SSEParser:
    """Feed it lines of a ``text/event-stream``; it yields ``(event, data)`` with JSON data."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Iterator[tuple[str, Any]]:
        line = line.rstrip("\r\n")
        if not line:
            if self.data:
                text = "\n".join(self.data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield self.event, value
            self.event, self.data = "message", []
        elif line.startswith(":"):
            return
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self.event = value
            elif name == "data":
                self.data.append(value)


class ProgressBar:
    """A one-line text progress bar on ``stream`` (stderr by default), fed with the job's
    ``progress`` events: percent, round, step, q_C."""

    WIDTH = 30

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.percent = 0.0
        self.status = "queued"
        self.drawn = False

    def update(self, progress: Mapping[str, Any] | None = None, status: str | None = None) -> None:
        if status:
            self.status = status
        if progress:
            self.percent = float(progress.get("percent") or 0.0)
        filled = round(self.WIDTH * min(max(self.percent, 0.0), 100.0) / 100.0)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        info = ""
        if progress:
            info = f" round {progress.get('round')}/{progress.get('rounds')}"
            if progress.get("q_c") is not None:
                info += f" q={float(progress['q_c']):.3f}"
        line = f"\r{self.label} [{bar}] {self.percent:5.1f}% {self.status}{info}"
        self.stream.write(line.ljust(100))
        self.stream.flush()
        self.drawn = True

    def close(self, status: str) -> None:
        if status == "succeeded":
            self.percent = 100.0
        self.update(status=status)
        self.stream.write("\n")
        self.stream.flush()


def job_result(data: Mapping[str, Any]) -> dict[str, Any]:
    """The result of a finished job view; :class:`JobFailed` unless it succeeded."""
    if data.get("status") != "succeeded":
        if data.get("status") in TERMINAL:
            raise JobFailed(data)
        raise TivisError(0, f"job {data.get('id')} is {data.get('status')}; wait() for it first")
    return dict(data.get("result") or {})


def artifact_list(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, url)`` of every artifact of a succeeded job view."""
    job_result(data)
    return [(str(a["name"]), str(a["url"])) for a in data.get("artifacts") or []]


def safe_name(name: str) -> str:
    """An artifact name as a file name (no folders)."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", ".."):
        raise TivisError(0, f"refusing to write artifact named {name!r}")
    return base
