"""Model debugging jobs (SPEC "Model debugging"): classify and screen specs, and upload checks.

Importable without torch: the API validates requests with these before anything is queued, the
worker runs them. Images are named in a spec by an uploaded file's name or by a reference to an
artifact of a finished job (``{"job": id, "artifact": name}``); the caller resolves both to bytes.

Uploads are checked by content, never by name (:func:`check_upload`): PNG, JPEG or WebP, at most
``max_bytes`` bytes and ``max_pixels`` pixels (read from the header before anything is decoded),
and decodable to the end. :func:`check_request` runs every check of one request in one call.
"""

from __future__ import annotations

import difflib
import io
import struct
import warnings
from collections.abc import Collection, Mapping
from typing import Annotated, Any, NamedTuple

from pydantic import Field, field_validator, model_validator

from specs import DEFAULT_MODEL, MAX_MODELS, JobSpec, _Frozen, distinct_models

MAX_IMAGES = 16
MAX_RECTANGLES = 16
MAX_TOP_K = 20
MAX_SIDE = 65_535
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "WEBP")

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_UPLOAD_PIXELS",
    "FORMATS",
    "ArtifactRef",
    "ClassifySpec",
    "ImageRef",
    "Rectangle",
    "ScreenSpec",
    "UploadInfo",
    "UploadRejected",
    "check_models",
    "check_request",
    "check_upload",
    "image_key",
]


# --------------------------------------------------------------------------- specs


class ArtifactRef(_Frozen):
    """An artifact of a finished job used as an input image, e.g. a visualization to classify."""

    job: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    artifact: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")

    @property
    def key(self) -> str:
        """The key of this image in the ``images`` mapping given to the worker: ``job/artifact``."""
        return f"{self.job}/{self.artifact}"


ImageRef = Annotated[
    str | ArtifactRef,
    Field(description="an uploaded file's name, or {job, artifact} of a finished job"),
]


def image_key(ref: str | ArtifactRef) -> str:
    """The key under which the caller passes the bytes of ``ref``: the upload name or
    ``job/artifact``."""
    return ref if isinstance(ref, str) else ref.key


class Rectangle(_Frozen):
    """A rectangle in image pixels: columns ``x .. x + width - 1``, rows ``y .. y + height - 1``
    of the image as uploaded (before any resize)."""

    x: int = Field(ge=0, le=MAX_SIDE)
    y: int = Field(ge=0, le=MAX_SIDE)
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)

    def inside(self, width: int, height: int) -> bool:
        """Whether the rectangle lies wholly inside a ``width × height`` image."""
        return self.x + self.width <= width and self.y + self.height <= height


def _models_field() -> Any:
    return Field(
        default_factory=lambda: [DEFAULT_MODEL],
        min_length=1,
        max_length=MAX_MODELS,
        description="model names; each is run and shown side by side",
    )


class _DebugSpec(JobSpec):
    models: list[str] = _models_field()
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K, description="predictions shown per model")

    @model_validator(mode="before")
    @classmethod
    def _model_alias(cls, data: Any) -> Any:
        """Accept ``"model": name`` (or a list) as well as ``"models": [...]``."""
        if isinstance(data, dict) and "model" in data:
            data = dict(data)
            if "models" in data:
                raise ValueError("give either model or models, not both")
            value = data.pop("model")
            data["models"] = [value] if isinstance(value, str) else value
        return data

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return distinct_models(v)


class ClassifySpec(_DebugSpec):
    """``POST /classify``: top-k of each image under each model (Figure 6).

    ``images`` lists the images in panel order; empty means every uploaded image, in upload order.
    """

    images: list[ImageRef] = Field(default_factory=list, max_length=MAX_IMAGES)

    def image_keys(self) -> list[str]:
        """The keys of the named images, in order (see :func:`image_key`)."""
        return [image_key(r) for r in self.images]


class ScreenSpec(_DebugSpec):
    """``POST /screen``: fill rectangles with each model's zero, top-k before and after (Figure 7).

    ``image`` names the image; ``None`` means the one uploaded image.
    """

    image: ImageRef | None = None
    rectangles: list[Rectangle] = Field(min_length=1, max_length=MAX_RECTANGLES)

    def check_rectangles(self, width: int, height: int) -> None:
        """Raise ``ValueError`` naming the first rectangle not wholly inside the image."""
        for k, r in enumerate(self.rectangles):
            if not r.inside(width, height):
                raise ValueError(
                    f"rectangles[{k}] (x={r.x}, y={r.y}, width={r.width}, height={r.height}) "
                    f"extends past the {width}×{height} image: x + width must be <= {width} "
                    f"and y + height <= {height}"
                )


def check_models(models: Collection[str], known: Collection[str]) -> None:
    """Raise ``ValueError`` naming the first unknown model and the closest known names."""
    for name in models:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ValueError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(known))})")


# --------------------------------------------------------------------------- uploads


class UploadRejected(Exception):
    """An upload or request the API must refuse before queueing.

    ``status`` is 413 (too many bytes or pixels) or 422 (anything else); ``field`` is the request
    field at fault (e.g. ``"images[0]"`` or ``"rectangles"``), for problem+json.
    """

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class UploadInfo(NamedTuple):
    format: str
    width: int
    height: int


_GUESS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
)


def _what(data: bytes) -> str:
    for magic, name in _GUESS:
        if data.startswith(magic):
            return f"a {name} image"
    head = data[:512]
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognized content"


def image_header(data: bytes) -> UploadInfo | None:
    """Format and ``(width, height)`` of a PNG, JPEG or WebP from its header alone, or ``None``.

    Pillow's own plugin reads the header lazily (no pixel is decoded), as ``Image.open`` does,
    but without ``Image.open``'s decompression-bomb check, so that a header claiming more pixels
    than ``Image.MAX_IMAGE_PIXELS`` still tells its size (:func:`check_upload` refuses it with
    our limit's message, then leaves Pillow's guard to the full open). ``None`` for another type;
    ``ValueError`` for one of the three whose header cannot be read."""
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and accept(prefix) is not True:
            continue
        try:
            with factory(io.BytesIO(data), "") as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError, IndexError, struct.error, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ValueError(f"truncated or corrupt {fmt}: unreadable header ({reason})") from exc
        return UploadInfo(fmt, int(width), int(height))
    return None


def check_upload(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    *,
    field: str | None = None,
) -> UploadInfo:
    """Check an uploaded image by its content; return ``(format, width, height)``.

    In order: size in bytes (413), type and size from the header read lazily by Pillow
    (:func:`image_header`: PNG, JPEG or WebP, else 422), width and height against
    ``max_pixels`` before decoding (413; a header claiming
    50000×50000 in a few bytes is a decompression bomb), Pillow's own bomb guard (413), then a full
    decode: truncated or corrupt data is 422.

    Raises:
        UploadRejected: with ``status`` 413 or 422 and a message saying what was found.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise UploadRejected(
            413, f"upload is {len(data)} bytes, more than the limit of {max_bytes} bytes", field
        )
    if not data:
        raise UploadRejected(422, "upload is empty", field)
    try:
        header = image_header(data)
    except ValueError as exc:
        raise UploadRejected(422, str(exc), field) from exc
    if header is None:
        raise UploadRejected(
            422, f"unsupported image type: found {_what(data)}; send PNG, JPEG or WebP", field
        )
    fmt, w, h = header
    if w < 1 or h < 1:
        raise UploadRejected(422, f"corrupt {fmt}: header gives a size of {w}×{h}", field)
    if w * h > max_pixels:
        raise UploadRejected(
            413,
            f"image is {w}×{h} = {w * h} pixels, more than the limit of {max_pixels} pixels",
            field,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
                if im.format != fmt or im.size != (w, h):
                    raise UploadRejected(
                        422,
                        f"corrupt {fmt}: decoder sees {im.format} {im.size[0]}×{im.size[1]}, "
                        f"header says {w}×{h}",
                        field,
                    )
                im.verify()  # checksums (PNG CRCs) without decoding pixels
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as im:
                im.load()  # decodes every pixel: truncated data fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadRejected(413, f"decompression bomb refused: {exc}", field) from exc
    except UnidentifiedImageError as exc:
        raise UploadRejected(422, f"corrupt {fmt}: cannot be read as an image", field) from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise UploadRejected(422, f"truncated or corrupt {fmt}: {reason}", field) from exc
    return UploadInfo(fmt, w, h)


def check_request(
    spec: ClassifySpec | ScreenSpec,
    uploads: Mapping[str, bytes],
    *,
    known_models: Collection[str] | None = None,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
) -> dict[str, UploadInfo]:
    """Every check of one classify or screen request, before anything is queued or stored.

    ``uploads`` maps upload names to their bytes (artifact references are not in it: they were
    checked when their job wrote them). Checks each upload (:func:`check_upload`), that the spec
    names only uploads that exist and that something is there to classify, the model names against
    ``known_models`` (when given), and for a screen of an upload that every rectangle lies inside
    it. Returns what :func:`check_upload` found per upload name.

    Raises:
        UploadRejected: 413 or 422, with the request ``field`` at fault.
    """
    found: dict[str, UploadInfo] = {}
    for name, data in uploads.items():
        found[name] = check_upload(data, max_bytes, max_pixels, field=f"images[{name}]")
    if known_models is not None:
        try:
            check_models(spec.models, known_models)
        except ValueError as exc:
            raise UploadRejected(422, str(exc), "models") from exc
    refs: list[str | ArtifactRef]
    if isinstance(spec, ClassifySpec):
        refs = list(spec.images)
        if not refs and not uploads:
            raise UploadRejected(422, "no image: upload one or name a job artifact", "images")
        count = len(refs or uploads)
        if count > MAX_IMAGES:
            raise UploadRejected(422, f"at most {MAX_IMAGES} images, got {count}", "images")
    else:
        if spec.image is None:
            if len(uploads) != 1:
                raise UploadRejected(
                    422, f"screen takes exactly one image, got {len(uploads)} uploads", "image"
                )
            refs = [next(iter(uploads))]
        else:
            refs = [spec.image]
    for ref in refs:
        if isinstance(ref, str) and ref not in uploads:
            have = ", ".join(sorted(uploads)) or "none"
            raise UploadRejected(422, f"no upload named {ref!r} (uploads: {have})", "images")
    if isinstance(spec, ScreenSpec) and isinstance(refs[0], str):
        info = found[refs[0]]
        try:
            spec.check_rectangles(info.width, info.height)
        except ValueError as exc:
            raise UploadRejected(422, str(exc), "rectangles") from exc
    return found
