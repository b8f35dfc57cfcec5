"""Image parameterizations: pixel (identity) and decorrelated Fourier."""

from __future__ import annotations

import math

import pytest
import torch

from specs import ImageParameterization
from worker.engine import param as P
from worker.engine.images import flat_gray

FOURIER = ImageParameterization(kind="fourier")


def smooth_image(size: int = 32) -> torch.Tensor:
    """A colorful image well inside 0..255 (1, 3, size, size)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = 128 + 80 * torch.sin(2 * math.pi * xx / size)
    g = 128 + 60 * torch.cos(2 * math.pi * 2 * yy / size)
    b = 40 + 150 * (xx + yy) / (2 * size)
    return torch.stack([r, g, b]).float()[None]


def test_spectrum_scale_is_inverse_frequency() -> None:
    s = P.spectrum_scale(8, 8, 1.0)
    assert s.shape == (8, 5)
    assert float(s[0, 0]) == pytest.approx(8.0)  # DC: 1 / (1 / max(H, W))
    assert float(s[0, 1]) == pytest.approx(8.0)  # f = 1/8
    assert float(s[0, 4]) == pytest.approx(2.0)  # f = 1/2 (Nyquist)
    assert float(s[4, 4]) == pytest.approx(1 / math.sqrt(0.5))
    assert torch.equal(P.spectrum_scale(8, 8, 0.0), torch.ones(8, 5, dtype=torch.float64))


def test_color_matrix_columns_have_norm_at_most_one() -> None:
    norms = P.COLOR_MATRIX.norm(dim=0)
    assert float(norms.max()) == pytest.approx(1.0)


def test_fourier_round_trip_of_a_known_image() -> None:
    x = smooth_image()
    p = P.FourierParam(x, FOURIER)
    assert p.data.shape == (1, 3, 32, 17, 2)
    assert torch.allclose(p.images(), x, atol=1e-2)


def test_fourier_coefficients_are_the_scaled_spectrum_of_the_logits() -> None:
    """A single cosine in the decorrelated channels shows up as two spectrum coefficients."""
    n = 16
    cfg = ImageParameterization(kind="fourier", decorrelate=False)
    p = P.FourierParam(flat_gray([127.5], n), cfg)
    assert p.data.abs().max() < 1e-5  # logit(0.5) = 0 everywhere: an empty spectrum
    data = torch.zeros_like(p.data)
    data[0, 0, 0, 2, 0] = 1.0  # real part at (fy, fx) = (0, 2/16), channel R
    img = p.render(data)
    xx = torch.arange(n, dtype=torch.float64)
    # irfft2 (ortho) of one coefficient c at fx = k: (2 / n) * c * cos(2 pi k x / n)
    amp = 2.0 / n * float(P.spectrum_scale(n, n, 1.0)[0, 2]) / P.SPECTRUM_GAIN
    logit = amp * torch.cos(2 * math.pi * 2 * xx / n)
    expected = 255.0 * torch.sigmoid(logit)
    assert torch.allclose(img[0, 0].double(), expected.expand(n, n), atol=1e-4)
    assert torch.allclose(img[0, 1:], torch.full((2, n, n), 127.5), atol=1e-4)
    assert torch.allclose(p.encode(img), data, atol=1e-4)  # and back


def test_fourier_output_range_for_extreme_spectra() -> None:
    p = P.FourierParam(flat_gray([0, 255], 24), FOURIER)
    g = torch.Generator().manual_seed(0)
    data = torch.randn(p.data.shape, generator=g) * 1000.0
    img = p.render(data)
    assert img.shape == (2, 3, 24, 24)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 255.0


def test_initial_gray_sets_the_start_within_the_margin() -> None:
    cfg = ImageParameterization(kind="fourier", margin=64.0)
    p = P.FourierParam(flat_gray([0, 100, 255], 16), cfg)
    means = p.images().mean(dim=(1, 2, 3))
    assert torch.allclose(means, torch.tensor([64.0, 100.0, 191.0]), atol=1e-2)
    assert float(p.images().std(dim=(2, 3)).max()) < 1e-3  # still flat


def test_the_margin_is_the_start_headroom_a_transformed_image_keeps_its_range() -> None:
    """An image of 10s and 245s: encoded with the configured margin (64) it comes back squeezed
    into 64..191; with ``KEEP_MARGIN`` (how rounds re-encode) it comes back as it was."""
    cfg = ImageParameterization(kind="fourier", margin=64.0)
    p = P.FourierParam(flat_gray([0], 16), cfg)
    img = flat_gray([10], 16)
    img[..., :8] = 245.0
    squeezed = p.render(p.encode(img))
    assert float(squeezed.min()) >= 63.9 and float(squeezed.max()) <= 191.1
    kept = p.render(p.encode(img, margin=P.KEEP_MARGIN))
    assert torch.allclose(kept, img, atol=1e-2)


def test_saturation_zero_renders_along_the_first_color_only() -> None:
    """With ``saturation`` 0 the two color-difference channels have no effect (the gained color
    matrix is singular; it raised before): every spectrum renders to RGB logits along the first
    column of the color matrix, and a start encoded from any image renders so too."""
    cfg = ImageParameterization(kind="fourier", saturation=0.0)
    p = P.FourierParam(smooth_image(16), cfg)
    g = torch.Generator().manual_seed(0)
    for data in (p.data, torch.randn(p.data.shape, generator=g)):
        img = p.render(data).double()
        logits = torch.logit(img / 255.0)  # (1, 3, H, W)
        along = P.COLOR_MATRIX[:, 0][None, :, None, None] * logits[:, :1] / P.COLOR_MATRIX[0, 0]
        assert torch.allclose(logits, along, atol=1e-3)
    gray = P.FourierParam(flat_gray([127.5], 16), cfg)
    assert torch.allclose(gray.images(), flat_gray([127.5], 16), atol=1e-3)


def test_fourier_render_is_deterministic_and_differentiable() -> None:
    x = smooth_image(16)
    a, b = P.FourierParam(x, FOURIER), P.FourierParam(x, FOURIER)
    assert torch.equal(a.data, b.data)
    d = a.data.clone().requires_grad_(True)
    a.render(d).sum().backward()
    assert d.grad is not None and float(d.grad.abs().sum()) > 0


def test_pixel_param_is_the_image() -> None:
    x = smooth_image(8)
    p = P.make_param(ImageParameterization(), x)
    assert isinstance(p, P.PixelParam) and p.clip
    assert torch.equal(p.images(), x)
    assert torch.equal(p.encode(x + 300), torch.full_like(x, 255.0))


def test_make_param_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        P.make_param(FOURIER, torch.zeros(3, 8, 8))
