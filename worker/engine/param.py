"""Image parameterizations: what the optimizer changes, and how it becomes a pixel-space image.

``pixel`` (the paper's): the parameters are the pixels themselves, 0..255, clipped after every
step. ``fourier`` (Lucid / Lucent, "decorrelated Fourier"): the parameters are the real and
imaginary parts of the 2D real FFT of each color channel, scaled by ``1 / frequency ** decay`` so
that a step of the optimizer changes coarse structure more than fine detail; a fixed 3×3 matrix
maps the decorrelated channels to RGB, and a sigmoid squashes the result into 0..255 (so no
clipping is needed and gradients never vanish at the clip).

``maco`` (Fel et al. 2023, "magnitude constrained optimization"): the parameters are only the
*phases* of the spectrum; each decorrelated channel's magnitude is fixed to the mean magnitude
spectrum of photographs (``data/natural_spectrum.npy``, written by
``scripts/natural_spectrum.py`` from scikit-image's bundled photos). Each render standardizes the
image (zero mean, unit standard deviation per image), multiplies the two color-difference channels
by ``saturation`` and everything by ``contrast``, maps to RGB with the same color matrix and
squashes with a sigmoid. The start is a seeded random phase (a flat gray image has no phase): the
initial gray does not set it.

Every parameterization can also *encode* a pixel-space image (its exact inverse, up to the sigmoid
not reaching 0 and 255; ``maco`` keeps the phase and drops the magnitude): that is how the initial
gray sets the starting image and how the paper's round-by-round transformations (rotate the
image, keep optimizing) work on any parameterization.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

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


KEEP_MARGIN = 0.5
"""The margin an image transformed between rounds is encoded with: as it is, up to the half gray
level that the sigmoid cannot reach. (The configured ``margin`` is the start's headroom; applied
after every round, it squeezed the picture into [margin, 255 - margin] again and again.)"""

SPECTRUM_FILE = Path(__file__).with_name("data") / "natural_spectrum.npy"
"""The photographs' mean magnitude spectrum (3, 256, 129), decorrelated channels, float16."""


@lru_cache(maxsize=1)
def _stored_spectrum() -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.load(SPECTRUM_FILE).astype(np.float32))


@lru_cache(maxsize=8)
def natural_magnitude(h: int, w: int) -> torch.Tensor:
    """The stored magnitude spectrum resized to an (H, W) image: (3, H, W // 2 + 1), float32.

    Rows are put in increasing frequency order (``fftshift``) before the bilinear resize and back
    after it, so low frequencies stay low; the zero frequency is set to 0 (the render removes the
    mean anyway).
    """
    m = torch.fft.fftshift(_stored_spectrum(), dim=-2)[None]
    m = F.interpolate(m, size=(h, w // 2 + 1), mode="bilinear", align_corners=True)[0]
    out: torch.Tensor = torch.fft.ifftshift(m, dim=-2).contiguous()
    out[:, 0, 0] = 0.0
    return out


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

    def encode(self, images: torch.Tensor, margin: float | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in pixel space -> parameters that render to them (``margin``:
        unused, the pixels are the parameters)."""
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
        if cfg.contrast != 1.0 or cfg.saturation != 1.0:
            gain = torch.tensor([1.0, cfg.saturation, cfg.saturation], dtype=torch.float64)
            color = color * gain[None, :] * cfg.contrast
        self.color = color.to(dev, torch.float32)
        # saturation 0 leaves no color to encode: the least-squares inverse (pinv) drops it
        inv = torch.linalg.pinv if cfg.saturation == 0.0 else torch.linalg.inv
        self.color_inv = inv(color).to(dev, torch.float32)
        self.data = self.encode(images)

    def render(self, data: torch.Tensor) -> torch.Tensor:
        """Spectra (N, 3, H, W // 2 + 1, 2) -> images (N, 3, H, W) in 0..255; differentiable."""
        spec = torch.view_as_complex((data * self.scale).contiguous())
        c = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / SPECTRUM_GAIN
        rgb = torch.einsum("ij,njhw->nihw", self.color, c)  # (N, 3, H, W) logits
        return 255.0 * torch.sigmoid(rgb)

    def encode(self, images: torch.Tensor, margin: float | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) -> spectra that render to them.

        Exact except that values are first clamped to ``[margin, 255 - margin]`` (the sigmoid
        never reaches 0 or 255); ``margin`` defaults to the configuration's (the start's
        headroom).
        """
        check_images(images)
        m = self.cfg.margin if margin is None else margin
        p = images.detach().float().clamp(m, 255.0 - m) / 255.0
        rgb = torch.log(p) - torch.log1p(-p)  # logit
        c = torch.einsum("ij,njhw->nihw", self.color_inv, rgb) * SPECTRUM_GAIN
        spec = torch.fft.rfft2(c, norm="ortho")
        return torch.view_as_real(spec).contiguous() / self.scale

    def images(self) -> torch.Tensor:
        with torch.no_grad():
            return self.render(self.data)


class MacoParam:
    """Phase-only Fourier parameterization under a fixed natural magnitude (module docstring).

    ``data`` holds the phases (B, 3, H, W // 2 + 1) in radians, one per ``rfft2`` coefficient of
    each decorrelated channel; the start is uniform in [-pi, pi), drawn from ``gens[b]``.
    """

    clip = False

    def __init__(
        self,
        images: torch.Tensor,
        cfg: ImageParameterization,
        gens: list[torch.Generator] | None = None,
    ) -> None:
        check_images(images)
        self.cfg = cfg
        b = int(images.shape[0])
        self.h, self.w = int(images.shape[-2]), int(images.shape[-1])
        dev = images.device
        self.magnitude = natural_magnitude(self.h, self.w).to(dev)  # (3, H, W')
        color = COLOR_MATRIX if cfg.decorrelate else torch.eye(3, dtype=torch.float64)
        gain = torch.tensor([1.0, cfg.saturation, cfg.saturation], dtype=torch.float64)
        self.color = (color * gain[None, :] * cfg.contrast).to(dev, torch.float32)
        self.color_inv = torch.linalg.inv(color).to(dev, torch.float32)
        if gens is not None and len(gens) != b:
            raise ValueError(f"expected one generator per image ({b}), got {len(gens)}")
        shape = (3, self.h, self.w // 2 + 1)
        phases = [
            (torch.rand(shape, generator=gens[i] if gens else None) * 2.0 - 1.0) * math.pi
            for i in range(b)
        ]
        data = torch.stack(phases) if phases else torch.zeros(0, *shape)
        # keep only phases a real image can have (the redundant half of the first and last
        # columns of rfft2 is set by the other half): then encode(render(data)) == data
        real = torch.fft.irfft2(torch.polar(torch.ones_like(data), data), s=(self.h, self.w))
        self.data = torch.angle(torch.fft.rfft2(real)).to(dev)

    def render(self, data: torch.Tensor) -> torch.Tensor:
        """Phases (N, 3, H, W') -> images (N, 3, H, W) in 0..255; differentiable."""
        spec = torch.polar(self.magnitude.expand_as(data), data)
        c = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho")  # (N, 3, H, W)
        c = c - c.mean(dim=(1, 2, 3), keepdim=True)
        c = c / (c.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        rgb = torch.einsum("ij,njhw->nihw", self.color, c)
        return 255.0 * torch.sigmoid(rgb)

    def encode(self, images: torch.Tensor, margin: float | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) -> the phases of their decorrelated logits (the magnitude is
        dropped: rendering gives the image's structure under the natural magnitude; ``margin``:
        unused)."""
        check_images(images)
        p = images.detach().float().clamp(0.5, 254.5) / 255.0
        rgb = torch.log(p) - torch.log1p(-p)
        c = torch.einsum("ij,njhw->nihw", self.color_inv, rgb)
        return torch.angle(torch.fft.rfft2(c, norm="ortho"))

    def images(self) -> torch.Tensor:
        with torch.no_grad():
            return self.render(self.data)


ImageParam = PixelParam | FourierParam | MacoParam


def make_param(
    cfg: ImageParameterization,
    images: torch.Tensor,
    gens: list[torch.Generator] | None = None,
) -> ImageParam:
    """The parameterization ``cfg.kind``, starting at ``images`` (B, 3, H, W), pixel space.

    ``gens`` (one CPU generator per image) seed the random start of ``maco``.
    """
    if cfg.kind == "pixel":
        return PixelParam(images)
    if cfg.kind == "fourier":
        return FourierParam(images, cfg)
    if cfg.kind == "maco":
        return MacoParam(images, cfg, gens)
    raise ValueError(f"expected parameterization 'pixel', 'fourier' or 'maco', got {cfg.kind!r}")


__all__ = [
    "COLOR_MATRIX",
    "KEEP_MARGIN",
    "SPECTRUM_FILE",
    "FourierParam",
    "ImageParam",
    "MacoParam",
    "PixelParam",
    "make_param",
    "natural_magnitude",
    "rfft2_freqs",
    "spectrum_scale",
]
