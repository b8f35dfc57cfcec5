"""Upload checks and debugging specs (``specs.classify``): what the API refuses before queueing."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from photos import photo
from PIL import Image
from pydantic import ValidationError

from specs.classify import (
    ArtifactRef,
    ClassifySpec,
    ScreenSpec,
    UploadRejected,
    check_models,
    check_request,
    check_upload,
    image_header,
)

ROOT = Path(__file__).resolve().parents[1]


def encoded(fmt: str, size: tuple[int, int] = (40, 30), **kw: object) -> bytes:
    im = Image.new("RGB", size, (200, 30, 60))
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header claiming ``width × height`` (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rejected(data: bytes, max_bytes: int = 10**8, max_pixels: int = 40_000_000) -> UploadRejected:
    with pytest.raises(UploadRejected) as info:
        check_upload(data, max_bytes, max_pixels)
    return info.value


# --------------------------------------------------------------------------- good uploads


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_png_jpeg_webp_are_accepted_with_their_size(fmt: str, kw: dict[str, object]) -> None:
    assert check_upload(encoded(fmt, (40, 30), **kw)) == (fmt, 40, 30)


def test_real_photos_are_accepted() -> None:
    assert check_upload(photo("chelsea.png")) == ("PNG", 451, 300)
    assert check_upload(photo("rocket.jpg")) == ("JPEG", 640, 427)


def test_webp_extended_header_size() -> None:
    data = encoded("WEBP", (33, 21), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    assert data[12:16] == b"VP8X"
    assert image_header(data) == ("WEBP", 33, 21)
    assert check_upload(data) == ("WEBP", 33, 21)


# --------------------------------------------------------------------------- bad uploads


def test_wrong_type_gif_is_refused_by_content() -> None:
    err = rejected(encoded("GIF"))
    assert err.status == 422
    assert "GIF" in err.message and "PNG, JPEG or WebP" in err.message


def test_text_file_named_png_is_refused() -> None:
    err = rejected(b"hello, I am not a picture\n")
    assert err.status == 422 and "text" in err.message


def test_bmp_is_refused() -> None:
    err = rejected(encoded("BMP"))
    assert err.status == 422 and "BMP" in err.message


def test_empty_upload() -> None:
    err = rejected(b"")
    assert err.status == 422 and "empty" in err.message


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
def test_truncated_photo_is_refused(name: str) -> None:
    data = photo(name)
    err = rejected(data[: len(data) // 2])
    assert err.status == 422
    assert "truncated or corrupt" in err.message


def test_png_with_a_bad_checksum_is_refused() -> None:
    data = bytearray(encoded("PNG"))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip bits inside the compressed pixels; the CRC no longer matches
    err = rejected(bytes(data))
    assert err.status == 422 and "corrupt" in err.message


def test_png_header_only_is_refused() -> None:
    err = rejected(encoded("PNG")[:20])
    assert err.status == 422


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = png_claiming(50_000, 50_000)
    assert len(bomb) < 200
    err = rejected(bomb, max_pixels=40_000_000)
    assert err.status == 413
    assert "50000×50000" in err.message and "40000000" in err.message


def test_decompression_bomb_is_refused_by_pillow_when_our_limit_is_higher() -> None:
    err = rejected(png_claiming(50_000, 50_000), max_pixels=10**10)
    assert err.status == 413 and "decompression bomb" in err.message


def test_pixel_limit_is_configurable() -> None:
    data = encoded("PNG", (100, 100))
    err = rejected(data, max_pixels=9_999)
    assert err.status == 413 and "100×100" in err.message
    assert check_upload(data, max_pixels=10_000).width == 100


def test_oversize_file_is_refused_before_anything_else() -> None:
    data = photo("chelsea.png")
    err = rejected(data, max_bytes=len(data) - 1)
    assert err.status == 413 and str(len(data)) in err.message
    assert rejected(b"x" * 101, max_bytes=100).status == 413  # even when not an image


# --------------------------------------------------------------------------- specs


def test_classify_defaults_and_image_references() -> None:
    spec = ClassifySpec.model_validate(
        {"images": ["cat.png", {"job": "abc123", "artifact": "tiny-0-soccer_ball-image.png"}]}
    )
    assert spec.models == ["efficientnet_lite0"] and spec.top_k == 5
    assert spec.image_keys() == ["cat.png", "abc123/tiny-0-soccer_ball-image.png"]
    assert isinstance(spec.images[1], ArtifactRef)
    assert ClassifySpec.model_validate({"model": "resnet50"}).models == ["resnet50"]


@pytest.mark.parametrize(
    "body",
    [
        {"top_k": 0},
        {"top_k": 21},
        {"models": []},
        {"models": ["a", "b", "c", "d", "e"]},
        {"models": ["resnet50", "resnet50"]},
        {"model": "a", "models": ["b"]},
        {"images": [{"job": "../etc", "artifact": "x.png"}]},
        {"colour": "red"},
    ],
)
def test_classify_spec_bounds(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ClassifySpec.model_validate(body)


@pytest.mark.parametrize(
    "rect",
    [
        {"x": 0, "y": 0, "width": 0, "height": 10},
        {"x": -1, "y": 0, "width": 10, "height": 10},
        {"x": 0, "y": 0, "width": 10},
        {"x": 0, "y": 0, "width": 70_000, "height": 10},
    ],
)
def test_rectangle_bounds(rect: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        ScreenSpec.model_validate({"rectangles": [rect]})


def test_screen_needs_a_rectangle() -> None:
    with pytest.raises(ValidationError):
        ScreenSpec.model_validate({"rectangles": []})


def test_rectangle_outside_the_image() -> None:
    spec = ScreenSpec.model_validate(
        {
            "rectangles": [
                {"x": 10, "y": 10, "width": 20, "height": 20},
                {"x": 440, "y": 0, "width": 20, "height": 20},
            ]
        }
    )
    spec.check_rectangles(460, 300)
    with pytest.raises(ValueError, match=r"rectangles\[1\].*451×300"):
        spec.check_rectangles(451, 300)


def test_unknown_model() -> None:
    known = ["efficientnet_lite0", "resnet50", "vgg19"]
    check_models(["resnet50"], known)
    with pytest.raises(ValueError, match="unknown model 'resnet5'; closest: resnet50"):
        check_models(["resnet5"], known)


# --------------------------------------------------------------------------- one call for the API


def test_check_request_accepts_a_good_request() -> None:
    spec = ScreenSpec.model_validate(
        {"models": ["resnet50"], "rectangles": [{"x": 0, "y": 0, "width": 451, "height": 300}]}
    )
    found = check_request(spec, {"cat.png": photo("chelsea.png")}, known_models=["resnet50"])
    assert found == {"cat.png": ("PNG", 451, 300)}


@pytest.mark.parametrize(
    ("body", "uploads", "status", "field", "words"),
    [
        (
            {"rectangles": [{"x": 450, "y": 0, "width": 2, "height": 2}]},
            {"cat.png": "chelsea.png"},
            422,
            "rectangles",
            "extends past",
        ),
        (
            {"models": ["resnet5"], "rectangles": [{"x": 0, "y": 0, "width": 2, "height": 2}]},
            {"cat.png": "chelsea.png"},
            422,
            "models",
            "closest: resnet50",
        ),
        (
            {"image": "dog.png", "rectangles": [{"x": 0, "y": 0, "width": 2, "height": 2}]},
            {"cat.png": "chelsea.png"},
            422,
            "images",
            "no upload named 'dog.png'",
        ),
        (
            {"rectangles": [{"x": 0, "y": 0, "width": 2, "height": 2}]},
            {"a.png": "chelsea.png", "b.png": "coffee.png"},
            422,
            "image",
            "exactly one",
        ),
        (
            {"rectangles": [{"x": 0, "y": 0, "width": 2, "height": 2}]},
            {"cat.png": b"GIF89a..."},
            422,
            "images[cat.png]",
            "GIF",
        ),
        (
            {"rectangles": [{"x": 0, "y": 0, "width": 2, "height": 2}]},
            {"cat.png": "bomb"},
            413,
            "images[cat.png]",
            "pixels",
        ),
    ],
)
def test_check_request_refusals(
    body: dict[str, object],
    uploads: dict[str, str | bytes],
    status: int,
    field: str,
    words: str,
) -> None:
    files = {
        name: png_claiming(50_000, 50_000) if v == "bomb" else photo(v) if isinstance(v, str) else v
        for name, v in uploads.items()
    }
    spec = ScreenSpec.model_validate(body)
    with pytest.raises(UploadRejected) as info:
        check_request(spec, files, known_models=["efficientnet_lite0", "resnet50"])
    assert (info.value.status, info.value.field) == (status, field)
    assert words in info.value.message


def test_classify_request_needs_an_image() -> None:
    with pytest.raises(UploadRejected) as info:
        check_request(ClassifySpec(), {})
    assert info.value.status == 422 and info.value.field == "images"
    refs = ClassifySpec.model_validate({"images": [{"job": "j1", "artifact": "grid.png"}]})
    assert check_request(refs, {}) == {}  # artifacts of finished jobs are resolved by the worker


def test_specs_debug_imports_no_torch(tmp_path: Path) -> None:
    png = tmp_path / "coffee.png"
    png.write_bytes(photo("coffee.png"))
    code = (
        "import sys, specs.classify as d; "
        "print(d.check_upload(open(sys.argv[1], 'rb').read())); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(png)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "PNG" in run.stdout
