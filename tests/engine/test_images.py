from __future__ import annotations

import torch

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
