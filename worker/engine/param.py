"""Image parameterizations: what the optimizer changes, and how it becomes a pixel-space image.

``pixel`` (the paper's): the parameters are the pixels themselves, 0..255, clipped after every
step. ``fourier`` (Lucid / Lucent, "decorrelated Fourier"): the parameters are the real and
imaginary parts of the 2D real FFT of each color channel, scaled by ``1 / frequency ** decay`` so
that a step of the optimizer changes coarse structure more than fine detail; a fixed 3×3 matrix
maps the decorrelated channels to RGB, and a sigmoid squashes the result into 0..255 (so no
clipping is needed and gradients never vanish at the clip).

Every parameterization can also *encode* a pixel-space image (its exact inverse, up to the sigmoid
not reaching 0 and 255): that is how the initial gray sets the starting image and how the paper's
round-by-round transformations (rotate the image, keep optimizing) work on any parameterization.
"""

from __future__ import annotations

import torch

from specs import ImageParameterization
from worker.engine.images import check_images

# Square root of the color correlation of ImageNet images, from Lucid
# (lucid/optvis/param/color.py), normalized so that its largest column has norm 1.
_COLOR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
COLOR_MATRIX = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
"""(3, 3): decorrelated channels -> RGB logits (``rgb = COLOR_MATRIX @ c`` at every pixel)."""

SPECTRUM_GAIN = 4.0
"""Lucid's constant: the inverse FFT is divided by it (keeps initial saturation low)."""


def rfft2_freqs(h: int, w: int) -> torch.Tensor:
    """Frequency magnitude (cycles per pixel) of every ``rfft2`` coefficient: (H, W // 2 + 1)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay: float) -> torch.Tensor:
    """``1 / max(f, 1 / max(H, W)) ** decay`` per coefficient: (H, W // 2 + 1), float64."""
    f = rfft2_freqs(h, w).clamp(min=1.0 / max(h, w))
    return f.pow(-decay)


class PixelParam:
    """The paper's parameterization: ``data`` is the image (B, 3, H, W), 0..255."""

    clip = True

    def __init__(self, images: torch.Tensor) -> None:
        check_images(images)
        self.data = images.detach().clone().float().clamp_(0.0, 255.0)

    def render(self, data: torch.Tensor) -> torch.Tensor:
        """Parameters (N, ...) -> images (N, 3, H, W) in pixel space; differentiable."""
        return data

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in pixel space -> parameters that render to them."""
        return images.detach().float().clamp(0.0, 255.0)

    def images(self) -> torch.Tensor:
        """All current images (B, 3, H, W), no gradient."""
        with torch.no_grad():
            return self.render(self.data)


class FourierParam:
    """Decorrelated-color Fourier parameterization (see the module docstring).

    ``data`` holds the spectra as real tensors (B, 3, H, W // 2 + 1, 2): real and imaginary parts
    of ``rfft2`` (orthonormal) of each decorrelated channel, divided by ``spectrum_scale``.
    """

    clip = False

    def __init__(self, images: torch.Tensor, cfg: ImageParameterization) -> None:
        check_images(images)
        self.cfg = cfg
        self.h, self.w = int(images.shape[-2]), int(images.shape[-1])
        dev = images.device
        self.scale = spectrum_scale(self.h, self.w, cfg.decay).to(dev, torch.float32)[..., None]
        color = COLOR_MATRIX if cfg.decorrelate else torch.eye(3, dtype=torch.float64)
        self.color = color.to(dev, torch.float32)
        self.color_inv = torch.linalg.inv(color).to(dev, torch.float32)
        self.data = self.encode(images)

    def render(self, data: torch.Tensor) -> torch.Tensor:
        """Spectra (N, 3, H, W // 2 + 1, 2) -> images (N, 3, H, W) in 0..255; differentiable."""
        spec = torch.view_as_complex((data * self.scale).contiguous())
        c = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / SPECTRUM_GAIN
        rgb = torch.einsum("ij,njhw->nihw", self.color, c)  # (N, 3, H, W) logits
        return 255.0 * torch.sigmoid(rgb)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> spectra that render to them.

        Exact except that values are first clamped to ``[margin, 255 - margin]`` (the sigmoid
        never reaches 0 or 255).
        """
        check_images(images)
        m = self.cfg.margin
        p = images.detach().float().clamp(m, 255.0 - m) / 255.0
        rgb = torch.log(p) - torch.log1p(-p)  # logit
        c = torch.einsum("ij,njhw->nihw", self.color_inv, rgb) * SPECTRUM_GAIN
        spec = torch.fft.rfft2(c, norm="ortho")
        return torch.view_as_real(spec).contiguous() / self.scale

    def images(self) -> torch.Tensor:
        with torch.no_grad():
            return self.render(self.data)


ImageParam = PixelParam | FourierParam


def make_param(cfg: ImageParameterization, images: torch.Tensor) -> ImageParam:
    """The parameterization ``cfg.kind``, starting at ``images`` (B, 3, H, W), pixel space."""
    if cfg.kind == "pixel":
        return PixelParam(images)
    if cfg.kind == "fourier":
        return FourierParam(images, cfg)
    raise ValueError(f"expected parameterization 'pixel' or 'fourier', got {cfg.kind!r}")


__all__ = [
    "COLOR_MATRIX",
    "FourierParam",
    "ImageParam",
    "PixelParam",
    "make_param",
    "rfft2_freqs",
    "spectrum_scale",
]
