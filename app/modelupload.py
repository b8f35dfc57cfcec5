"""Reading ``POST /models`` bodies: the model file streamed to disk, within the size limit.

``multipart/form-data`` with one file part named ``file`` (its name's extension gives the
format: ``.pt2``, ``.pt``, ``.pth`` or ``.safetensors``) and one text part named ``metadata``
holding the JSON metadata (``specs.models.ModelMetadata``). The file goes straight to a private
folder of the model store, hashed (sha256) as it arrives; a file over the limit is refused with
413 as soon as it passes it, and nothing of it is kept. Torch-free and Redis-free.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.uploads import BodyRejected, PartCallbacks

FILE_FIELD = "file"
METADATA_FIELD = "metadata"
MAX_METADATA_BYTES = 8 * 1024 * 1024


@dataclass
class ModelBody:
    """A parsed registration: the metadata text, the file (name as sent, path, size, sha256)."""

    metadata: str | None = None
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    sha256: str = ""
    _chunks: list[bytes] = field(default_factory=list)


class _Collector(PartCallbacks):
    """Streams the file part to disk (hashed, within the limit) and collects the metadata."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        super().__init__()
        self.folder = folder
        self.max_bytes = max_bytes
        self.body = ModelBody()
        self.part = ""
        self.out: IO[bytes] | None = None
        self.hash = hashlib.sha256()
        self.meta_size = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.part = ""

    def part_started(self, name: str, filename: str | None) -> None:
        self.part = name
        if name == FILE_FIELD:
            if filename is None:
                raise BodyRejected(422, f"{FILE_FIELD!r} must be a file part", FILE_FIELD)
            if self.body.filename is not None:
                raise BodyRejected(422, "give one model file, got two", FILE_FIELD)
            self.body.filename = posixpath.basename(filename.replace("\\", "/")) or "model"
            self.body.path = self.folder / "upload"
            self.out = open(self.body.path, "wb")  # noqa: SIM115 (closed at the part's end)
        elif name == METADATA_FIELD:
            if self.body.metadata is not None:
                raise BodyRejected(422, "give one metadata part, got two", METADATA_FIELD)
        else:
            raise BodyRejected(
                422,
                f"unknown multipart field {name!r}: send the model as a file part named "
                f"{FILE_FIELD!r} and its JSON metadata as a part named {METADATA_FIELD!r}",
                name or "body",
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part == FILE_FIELD and self.out is not None:
            self.body.size += len(chunk)
            if self.body.size > self.max_bytes:
                raise BodyRejected(
                    413,
                    f"the model file is more than the limit of {self.max_bytes} bytes "
                    "(TIVIS_MAX_MODEL_BYTES)",
                    FILE_FIELD,
                )
            self.hash.update(chunk)
            self.out.write(chunk)
        elif self.part == METADATA_FIELD:
            self.meta_size += len(chunk)
            if self.meta_size > MAX_METADATA_BYTES:
                raise BodyRejected(
                    413, f"the metadata is over {MAX_METADATA_BYTES} bytes", METADATA_FIELD
                )
            self.body._chunks.append(chunk)

    def on_part_end(self) -> None:
        if self.part == FILE_FIELD and self.out is not None:
            self.out.close()
            self.out = None
            self.body.sha256 = self.hash.hexdigest()
        elif self.part == METADATA_FIELD:
            try:
                self.body.metadata = b"".join(self.body._chunks).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BodyRejected(422, "the metadata is not UTF-8 text", METADATA_FIELD) from exc

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


async def read_model_body(request: Request, folder: Path, max_bytes: int) -> ModelBody:
    """The metadata and the file of a registration, the file written into ``folder``.

    Raises:
        BodyRejected: 413 for a file over ``max_bytes`` (found while streaming), 415 for another
            content type, 400/422 for a malformed body or a missing part.
    """
    ctype, options = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        raise BodyRejected(
            415,
            f"send multipart/form-data (a file part {FILE_FIELD!r} and a JSON part "
            f"{METADATA_FIELD!r}), got {ctype.decode('latin-1') or 'no content type'}",
            "content-type",
        )
    limit = max_bytes + MAX_METADATA_BYTES + 64 * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyRejected(
            413,
            f"request body of {declared} bytes is over the limit of {max_bytes} bytes for a "
            "model file (TIVIS_MAX_MODEL_BYTES)",
            FILE_FIELD,
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BodyRejected(400, "multipart/form-data without a boundary", "content-type")
    collector = _Collector(folder, max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise BodyRejected(413, f"request body over the limit of {limit} bytes", "body")
            if chunk:  # hashing and writing to disk off the event loop
                await anyio.to_thread.run_sync(parser.write, chunk)
        parser.finalize()
    except BodyRejected:
        raise
    except ClientDisconnect as exc:
        raise BodyRejected(400, "the client disconnected before the body ended", "body") from exc
    except Exception as exc:
        raise BodyRejected(400, f"malformed multipart body: {exc}", "body") from exc
    finally:
        collector.close()
    body = collector.body
    if body.path is None:
        raise BodyRejected(422, f"no model file: send a file part named {FILE_FIELD!r}", FILE_FIELD)
    if body.metadata is None:
        raise BodyRejected(
            422, f"no metadata: send a JSON part named {METADATA_FIELD!r}", METADATA_FIELD
        )
    return body
