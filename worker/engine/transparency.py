"""Transparency maps: where the model looks (MACO, Fel et al. 2023).

The optimization adds up, at every step, the absolute gradient of the objective with respect to the
picture (``optimize.visualize(..., transparency=True)``; no extra forward or backward pass). Here
that sum becomes an alpha channel: outliers are clipped at a high quantile and the rest scaled to
0..1, so the picture can be shown with the parts the model does not use faded out.
"""

from __future__ import annotations

import torch

from worker.engine.images import check_images, to_uint8

DEFAULT_QUANTILE = 0.99
"""Values above this quantile of the map are clipped (a few pixels would set the scale)."""


def alpha(saliency: torch.Tensor, quantile: float = DEFAULT_QUANTILE) -> torch.Tensor:
    """A raw map (H, W), >= 0, -> alpha (H, W) in 0..1: clipped at ``quantile``, divided by it.

    A map that is zero everywhere gives zero alpha.
    """
    if saliency.ndim != 2:
        raise ValueError(f"expected a map of shape (H, W), got {tuple(saliency.shape)}")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"expected a quantile in (0, 1], got {quantile}")
    m = saliency.detach().float().clamp(min=0.0)
    top = torch.quantile(m.flatten(), quantile)
    if float(top) <= 0.0:
        top = m.max()
    if float(top) <= 0.0:
        return torch.zeros_like(m)
    return (m / top).clamp_(0.0, 1.0)


def gray(a: torch.Tensor) -> torch.Tensor:
    """Alpha (H, W) in 0..1 -> a grayscale image (1, H, W) uint8 (white: where the model looks)."""
    return to_uint8(a[None] * 255.0)


def rgba(image: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The picture (3, H, W) in pixel space with alpha (H, W) in 0..1 -> (4, H, W) uint8."""
    check_images(image[None], "image")
    if a.shape != image.shape[-2:]:
        raise ValueError(f"expected alpha of shape {tuple(image.shape[-2:])}, got {tuple(a.shape)}")
    return torch.cat([to_uint8(image), to_uint8(a[None].to(image) * 255.0)])


__all__ = ["DEFAULT_QUANTILE", "alpha", "gray", "rgba"]
