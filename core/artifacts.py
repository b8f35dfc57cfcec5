"""The artifact store: job files (PNG, JSON) outside Redis, behind one interface.

Chosen by one URL setting (``TIVIS_ARTIFACTS_URL``):

- ``file:///path`` or a plain directory path: :class:`DirectoryStore` (the embedded default is
  ``<data dir>/artifacts``); every write goes to a temporary file that is renamed into place, so
  a reader never sees half a file;
- ``s3://bucket/prefix``: :class:`S3Store`, any S3-compatible object storage through ``boto3``
  (AWS, MinIO, moto), with ``TIVIS_S3_ENDPOINT_URL``, ``TIVIS_S3_REGION``,
  ``TIVIS_S3_ACCESS_KEY_ID`` and ``TIVIS_S3_SECRET_ACCESS_KEY``; a PUT is atomic by itself.

Keys are ``<job id>/<attempt token>/<name>``: an attempt writes under its own prefix (staging),
and the job's Redis record points at published files only (``core.store``: the pointers are
published by the same Lua step that marks the job succeeded, or a chunk of an atlas done). What
no record points at is removed by :func:`sweep_job` once the job ended, and everything older
than the TTL by :meth:`ArtifactStore.expire`. Every failure of the store is an
:class:`ArtifactStoreError` with what failed, so a job can fail clearly.

Torch-free and FastAPI-free: the API streams downloads from it, the worker writes to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from core.settings import Settings

CHUNK = 256 * 1024
T = TypeVar("T")


class ArtifactStoreError(Exception):
    """The artifact store failed (unreachable, denied, full, ...): the message says what."""


class ArtifactNotFound(ArtifactStoreError):
    """No object under that key (never written, or expired)."""


@dataclass(frozen=True)
class ObjectInfo:
    """An object's size in bytes, its entity tag (quoted, as HTTP sends it) and modification
    time (seconds since the epoch)."""

    key: str
    size: int
    etag: str
    modified: float


class ArtifactStore(Protocol):
    """What the service needs from a place for files. Keys are ``/``-separated, relative."""

    url: str

    def put(self, key: str, data: bytes, media_type: str) -> ObjectInfo:
        """Write ``data`` under ``key`` whole (readers see all of it or nothing)."""
        ...

    def get(self, key: str) -> bytes:
        """All bytes of ``key``; :class:`ArtifactNotFound` if there is none."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size, ETag and time of ``key``, ``None`` if there is none."""
        ...

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive; ``end`` None: to the last byte) in chunks."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""
        ...

    def delete(self, keys: Iterable[str]) -> int:
        """Delete these keys (missing ones are ignored); the number deleted."""
        ...

    def expire(self, max_age: float, now: float | None = None) -> int:
        """Delete every object older than ``max_age`` seconds; the number deleted."""
        ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative artifact key: {key!r}")
    return key


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


class DirectoryStore:
    """Files under one directory: ``<root>/<key>``; temporary files start with ``.tmp-``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes, media_type: str) -> ObjectInfo:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            st = path.stat()
        except OSError as exc:
            raise ArtifactStoreError(
                f"could not write artifact {key!r} to {self.url}: {exc}"
            ) from exc
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact {key!r} in {self.url}") from exc
        except OSError as exc:
            raise ArtifactStoreError(f"could not read artifact {key!r}: {exc}") from exc

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactStoreError(f"could not stat artifact {key!r}: {exc}") from exc
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact {key!r} in {self.url}") from exc
        except OSError as exc:
            raise ArtifactStoreError(f"could not read artifact {key!r}: {exc}") from exc

        def chunks() -> Iterator[bytes]:
            with f:
                f.seek(start)
                left = None if end is None else end - start + 1
                while left is None or left > 0:
                    block = f.read(CHUNK if left is None else min(CHUNK, left))
                    if not block:
                        return
                    if left is not None:
                        left -= len(block)
                    yield block

        return chunks()

    def list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        base = self.root
        top = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / top if top else base
        if not start.is_dir():
            return out
        for dirpath, _, files in os.walk(start):
            for fn in files:
                path = Path(dirpath) / fn
                key = path.relative_to(base).as_posix()
                if fn.startswith(".tmp-") or not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    out.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: Iterable[str]) -> int:
        n = 0
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
                n += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ArtifactStoreError(f"could not delete artifact {key!r}: {exc}") from exc
            parent = path.parent
            while parent != self.root:  # drop emptied attempt and job folders
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return n

    def expire(self, max_age: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - max_age
        old = []
        if self.root.is_dir():
            for dirpath, _, files in os.walk(self.root):
                for fn in files:
                    path = Path(dirpath) / fn
                    with contextlib.suppress(FileNotFoundError):
                        if path.stat().st_mtime < cutoff:
                            old.append(path.relative_to(self.root).as_posix())
        return self.delete(old)


class S3Store:
    """Objects in an S3 bucket under an optional key prefix (``s3://bucket/prefix``).

    One boto3 client per process (made lazily, so forked workers do not share one)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self._cfg = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "aws_access_key_id": access_key_id or None,
            "aws_secret_access_key": secret_access_key or None,
        }
        self._create_bucket = create_bucket
        self._client: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                import boto3
                from botocore.config import Config

                config = Config(retries={"max_attempts": 3, "mode": "standard"},
                                connect_timeout=5, read_timeout=30)  # fmt: skip
                self._client = boto3.session.Session().client("s3", config=config, **self._cfg)
                self._pid = os.getpid()
                if self._create_bucket:
                    self._ensure_bucket(self._client)
            return self._client

    def _ensure_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError:
            with contextlib.suppress(ClientError):
                client.create_bucket(Bucket=self.bucket)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFound(f"{what}: not found in {self.url}") from exc
            raise ArtifactStoreError(f"{what} in {self.url} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise ArtifactStoreError(f"{what} in {self.url} failed: {exc}") from exc

    def _info(self, key: str, size: int, etag: str, modified: Any) -> ObjectInfo:
        etag = etag if etag.startswith('"') else f'"{etag}"'
        ts = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
        return ObjectInfo(key, int(size), etag, ts)

    def put(self, key: str, data: bytes, media_type: str) -> ObjectInfo:
        full = self.prefix + _check_key(key)
        res = self._call(
            f"writing artifact {key!r}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=media_type,
                ContentMD5=_md5_b64(data),
            ),
        )  # fmt: skip
        return self._info(key, len(data), str(res.get("ETag", "")), time.time())

    def get(self, key: str) -> bytes:
        full = self.prefix + _check_key(key)
        res = self._call(f"reading artifact {key!r}",
                         lambda: self.client.get_object(Bucket=self.bucket, Key=full))  # fmt: skip
        return bytes(self._call(f"reading artifact {key!r}", res["Body"].read))

    def stat(self, key: str) -> ObjectInfo | None:
        full = self.prefix + _check_key(key)
        try:
            res = self._call(
                f"reading artifact {key!r}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=full),
            )
        except ArtifactNotFound:
            return None
        return self._info(key, res["ContentLength"], str(res["ETag"]), res["LastModified"])

    def stream(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        full = self.prefix + _check_key(key)
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        res = self._call(
            f"reading artifact {key!r}",
            lambda: self.client.get_object(Bucket=self.bucket, Key=full, **extra),
        )
        body = res["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return chunks()

    def list(self, prefix: str) -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            out = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for o in page.get("Contents", []):
                    key = str(o["Key"])[len(self.prefix) :]
                    out.append(self._info(key, o["Size"], str(o["ETag"]), o["LastModified"]))
            return out

        return sorted(self._call(f"listing {prefix!r}", run), key=lambda o: o.key)

    def delete(self, keys: Iterable[str]) -> int:
        todo = [self.prefix + _check_key(k) for k in keys]
        n = 0
        for i in range(0, len(todo), 1000):
            batch = [{"Key": k} for k in todo[i : i + 1000]]
            res = self._call(
                "deleting artifacts",
                lambda b=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}
                ),
            )
            errors = res.get("Errors") or []
            if errors:
                raise ArtifactStoreError(f"deleting artifacts failed: {errors[:3]}")
            n += len(batch)
        return n

    def expire(self, max_age: float, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - max_age
        return self.delete(o.key for o in self.list("") if o.modified < cutoff)


def _md5_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data).digest()).decode()


def open_store(url: str, **s3: Any) -> ArtifactStore:
    """The store a URL names: ``s3://bucket/prefix`` (``s3`` keyword arguments go to
    :class:`S3Store`), ``file:///path`` or a plain path."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"an S3 artifacts URL needs a bucket: s3://bucket/prefix, got {url!r}")
        return S3Store(parsed.netloc, parsed.path, **s3)
    if parsed.scheme == "file":
        return DirectoryStore(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported artifacts URL {url!r} (file:///path, a path, or s3://)")
    return DirectoryStore(url)


def store_from_settings(settings: Settings) -> ArtifactStore:
    """The store of ``TIVIS_ARTIFACTS_URL`` (default: ``<data dir>/artifacts``)."""
    url = settings.artifacts_url or str(Path(settings.data_dir) / "artifacts")
    return open_store(
        url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value()
        if settings.s3_secret_access_key
        else None,
        create_bucket=settings.s3_create_bucket,
    )


# --- how jobs use the store -------------------------------------------------------------------


def attempt_key(job_id: str, token: str, name: str) -> str:
    """Where an attempt (``token``: ``a<n>`` for a job, ``c<i>-<n>`` for a chunk) puts ``name``."""
    return f"{job_id}/{token}/{name}"


def pointer(info: ObjectInfo, media_type: str) -> dict[str, Any]:
    """The small JSON a job record keeps per published artifact."""
    return {"key": info.key, "media_type": media_type, "size": info.size, "etag": info.etag}


def write_all(
    store: ArtifactStore, job_id: str, token: str, files: Iterable[tuple[str, bytes, str]]
) -> dict[str, dict[str, Any]]:
    """Write ``(name, bytes, media type)`` files under the attempt's prefix; name -> pointer.
    On an error the files written so far are deleted (best effort) and it is raised again."""
    out: dict[str, dict[str, Any]] = {}
    try:
        for name, data, media in files:
            info = store.put(attempt_key(job_id, token, name), data, media)
            out[name] = pointer(info, media)
    except ArtifactStoreError:
        with contextlib.suppress(ArtifactStoreError):
            store.delete(p["key"] for p in out.values())
        raise
    return out


def sweep_job(store: ArtifactStore, job_id: str, published: Iterable[str]) -> int:
    """Delete the job's objects that no published pointer names (stale or lost attempts)."""
    keep = set(published)
    stale = [o.key for o in store.list(f"{job_id}/") if o.key not in keep]
    return store.delete(stale) if stale else 0
