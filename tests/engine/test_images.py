from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from worker.engine.images import decode_image, encode_png, flat_gray, invert, to_uint8


def test_to_uint8_rounds_half_to_even_then_clips() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -3.0, 254.5, 255.5, 300.0])
    assert to_uint8(x).tolist() == [0, 2, 2, 0, 254, 255, 255]


def test_flat_gray_and_inversion() -> None:
    x = flat_gray([0, 60], 4)
    assert x.shape == (2, 3, 4, 4)
    assert x[1].unique().tolist() == [60.0]
    assert invert(x)[0].unique().tolist() == [255.0]


def test_png_round_trip_is_exact_and_deterministic() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 5, 7, generator=g) * 255
    data = encode_png(x)
    assert data == encode_png(x)
    assert torch.equal(decode_image(data), to_uint8(x).float())


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped() -> None:
    """16-bit levels v become round(v / 257): 0, mid gray and white as in 8 bits (Pillow's own
    conversion clipped every level above 255 to white)."""
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, format="PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode.startswith("I;16")  # what Pillow makes of it
    img = decode_image(buf.getvalue())
    assert img.shape == (3, 1, 4) and img.dtype == torch.float32
    assert img[0, 0].tolist() == [0.0, 1.0, 128.0, 255.0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])


def test_grayscale_and_palette_pngs_decode_to_rgb() -> None:
    gray = Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), mode="L")
    pal = gray.convert("P")
    for im in (gray, pal):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        img = decode_image(buf.getvalue())
        assert img[:, 0].tolist() == [[0.0, 100.0, 255.0]] * 3
