"""Reading ``POST /classify`` and ``POST /screen`` bodies with bounded memory.

The contract (one for both endpoints):

- ``multipart/form-data`` with any number of file parts named ``images`` (each part's file name
  is the upload's name, which the spec may refer to) and at most one text part named ``spec``
  holding the JSON spec (``ClassifySpec`` / ``ScreenSpec``; optional for classify);
- or ``application/json``: the spec alone, when every image is a ``{"job", "artifact"}``
  reference to a finished job.

The body is parsed as it streams in (``python-multipart``'s push parser): a file part is refused
with 413 as soon as it passes ``max_file_bytes``, and reading stops there, so no request can make
the API hold more than ``max_files × max_file_bytes`` plus a small spec. Torch-free and Redis-free.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

FILES_FIELD = "images"
SPEC_FIELD = "spec"
MAX_SPEC_BYTES = 64 * 1024
_NAME_OK = re.compile(r"[^A-Za-z0-9_.() -]+")


class BodyRejected(Exception):
    """The body cannot be accepted: ``status`` (400, 413, 415 or 422), ``field`` at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass
class Body:
    """A parsed request: the spec's JSON text (``None``: not given) and the uploads in order."""

    spec: str | None = None
    uploads: dict[str, bytes] = field(default_factory=dict)


def upload_name(filename: str | None, index: int) -> str:
    """The name of upload ``index``: its file name without any folder, made key-safe
    (``image-<index>`` when there is none)."""
    base = posixpath.basename((filename or "").replace("\\", "/")).strip()
    base = _NAME_OK.sub("_", base)[:200].strip(". ")
    return base or f"image-{index}"


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class PartCallbacks:
    """Callbacks for python-multipart's push :class:`MultipartParser`: this base collects each
    part's headers and hands its form field name and file name (``None``: not a file) to
    ``part_started``; a subclass takes the part's bytes (``on_part_data``, ``on_part_end``)."""

    def __init__(self) -> None:
        self.header_field = b""
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}
        self.header_field = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self.header_field.lower()
        self.headers[key] = self.headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.header_field = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        raw_filename = options.get(b"filename")
        self.part_started(
            options.get(b"name", b"").decode("utf-8", "replace"),
            None if raw_filename is None else raw_filename.decode("utf-8", "replace"),
        )

    def part_started(self, name: str, filename: str | None) -> None:
        raise NotImplementedError

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        raise NotImplementedError

    def on_part_end(self) -> None:
        raise NotImplementedError


class _Collector(PartCallbacks):
    """Collects the images and the spec, enforcing the limits as bytes arrive."""

    def __init__(self, max_file_bytes: int, max_files: int) -> None:
        super().__init__()
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.body = Body()
        self.part = _Part()
        self.files = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.part = _Part()

    def part_started(self, name: str, filename: str | None) -> None:
        self.part.name = name
        self.part.is_file = filename is not None
        if name == FILES_FIELD:
            if not self.part.is_file:
                raise BodyRejected(
                    422, f"{FILES_FIELD!r} parts must be files (PNG, JPEG or WebP)", FILES_FIELD
                )
            self.files += 1
            if self.files > self.max_files:
                raise BodyRejected(422, f"at most {self.max_files} images per request", FILES_FIELD)
            self.part.filename = upload_name(filename, self.files - 1)
            if self.part.filename in self.body.uploads:
                raise BodyRejected(
                    422,
                    f"two uploads are named {self.part.filename!r}; give each file its own name",
                    f"{FILES_FIELD}[{self.part.filename}]",
                )
        elif name == SPEC_FIELD:
            if self.body.spec is not None:
                raise BodyRejected(422, "give one spec part, got two", SPEC_FIELD)
        else:
            raise BodyRejected(
                422,
                f"unknown multipart field {name!r}: send the images as file parts named "
                f"{FILES_FIELD!r} and the JSON spec as a part named {SPEC_FIELD!r}",
                name or "body",
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size += end - start
        if part.name == FILES_FIELD and part.size > self.max_file_bytes:
            raise BodyRejected(
                413,
                f"upload {part.filename!r} is more than the limit of {self.max_file_bytes} bytes",
                f"{FILES_FIELD}[{part.filename}]",
            )
        if part.name == SPEC_FIELD and part.size > MAX_SPEC_BYTES:
            raise BodyRejected(413, f"the spec is over {MAX_SPEC_BYTES} bytes", SPEC_FIELD)
        part.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        part = self.part
        data = b"".join(part.chunks)
        if part.name == FILES_FIELD and part.filename is not None:
            self.body.uploads[part.filename] = data
        elif part.name == SPEC_FIELD:
            try:
                self.body.spec = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BodyRejected(422, "the spec is not UTF-8 text", SPEC_FIELD) from exc


async def read_body(request: Request, *, max_file_bytes: int, max_files: int) -> Body:
    """The spec text and uploads of a classify/screen request, read within the limits.

    Raises:
        BodyRejected: 413 for a file or spec over its limit (found while streaming, before the
            rest is read), 415 for another content type, 400/422 for a malformed body.
    """
    ctype, options = parse_options_header(request.headers.get("content-type"))
    limit = max_files * (max_file_bytes + 4096) + MAX_SPEC_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyRejected(
            413, f"request body of {declared} bytes is over the limit of {limit} bytes", "body"
        )
    try:
        if ctype == b"application/json":
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_SPEC_BYTES:
                    raise BodyRejected(413, f"JSON body over {MAX_SPEC_BYTES} bytes", "body")
                chunks.append(chunk)
            try:
                text = b"".join(chunks).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BodyRejected(422, "the JSON body is not UTF-8", "body") from exc
            return Body(spec=text)
        if ctype != b"multipart/form-data":
            raise BodyRejected(
                415,
                f"send multipart/form-data (file parts {FILES_FIELD!r}, JSON part {SPEC_FIELD!r}) "
                f"or application/json, got {ctype.decode('latin-1') or 'no content type'}",
                "content-type",
            )
        boundary = options.get(b"boundary")
        if not boundary:
            raise BodyRejected(400, "multipart/form-data without a boundary", "content-type")
        collector = _Collector(max_file_bytes, max_files)
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:  # padding or junk between parts: stop reading all the same
                raise BodyRejected(413, f"request body over the limit of {limit} bytes", "body")
            if chunk:
                parser.write(chunk)
        parser.finalize()
        return collector.body
    except (BodyRejected, HTTPException):  # HTTPException: the body's deadline (408)
        raise
    except ClientDisconnect as exc:
        raise BodyRejected(400, "the client disconnected before the body ended", "body") from exc
    except Exception as exc:  # python-multipart's parse errors
        raise BodyRejected(400, f"malformed multipart body: {exc}", "body") from exc
