"""Geometric transformations of pixel-space images: rotate, scale, flip.

Rotation and scaling resample bilinearly about the image center; what falls outside the square is
filled with 0 (black) and the result is clipped to 0..255 (SPEC "Visualize", step 2). Angles are
in degrees, counter-clockwise as the image is displayed (row 0 at the top), so that
``rotate(x, 90)`` equals ``torch.rot90(x, 1, dims=(2, 3))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from specs import Operation, RandomViews, TransformTests
from worker.engine import determinism
from worker.engine.images import check_images, to_device


def _cos_sin(degrees: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angles in degrees, exact at multiples of 90 degrees."""
    rad = torch.deg2rad(degrees)
    c, s = torch.cos(rad), torch.sin(rad)
    quarter = torch.remainder(degrees, 90.0) == 0
    c = torch.where(quarter, torch.round(c), c)
    s = torch.where(quarter, torch.round(s), s)
    return c, s


def affine_theta(degrees: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Sampling matrices (N, 2, 3) for ``F.affine_grid``: rotate by ``degrees``, zoom by ``scales``.

    ``affine_grid`` maps output coordinates to input coordinates, so the matrix is the inverse of
    the forward transform: input = R(-angle) · output / scale, in normalized coordinates with y
    pointing down.
    """
    c, s = _cos_sin(degrees)
    inv = 1.0 / scales
    zero = torch.zeros_like(c)
    row0 = torch.stack([c * inv, -s * inv, zero], dim=-1)
    row1 = torch.stack([s * inv, c * inv, zero], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def warp(x: torch.Tensor, degrees: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Rotate and scale each image of ``x`` (B, 3, H, W) by its own angle and factor.

    Args:
        x: square images (B, 3, H, W), pixel space 0..255.
        degrees: (B,) rotation angles in degrees, counter-clockwise.
        scales: (B,) zoom factors (> 1 enlarges).

    Returns:
        (B, 3, H, W) resampled bilinearly, zero (black) fill outside, clipped to 0..255.
    """
    check_images(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square images, got {x.shape[-2]}x{x.shape[-1]}")
    b = x.shape[0]
    if degrees.shape != (b,) or scales.shape != (b,):
        raise ValueError(
            f"expected degrees and scales of shape ({b},), got "
            f"{tuple(degrees.shape)} and {tuple(scales.shape)}"
        )
    # The matrices are made where the angles are (the CPU, for every caller in tivis) and sent
    # without making the host wait for the device.
    theta = affine_theta(degrees.to(x.dtype), scales.to(x.dtype))
    theta = to_device(theta, x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = determinism.grid_sample(x, grid)
    # Quarter turns at scale 1 move pixels onto pixels: make them exact (no resampling error).
    quarter = (torch.remainder(degrees, 90.0) == 0) & (scales == 1.0)
    for i in quarter.cpu().nonzero()[:, 0].tolist():
        k = round(float(degrees[i]) / 90.0) % 4
        out[i] = torch.rot90(x[i], k, dims=(1, 2))
    return out.clamp_(0.0, 255.0)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every image by ``degrees`` counter-clockwise about its center."""
    n = x.shape[0]
    return warp(x, torch.full((n,), float(degrees)), torch.ones(n))


def scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom every image by ``factor`` about its center (> 1 enlarges and crops)."""
    n = x.shape[0]
    return warp(x, torch.zeros(n), torch.full((n,), float(factor)))


def apply(x: torch.Tensor, op: Operation) -> torch.Tensor:
    """Apply one schedule operation to a batch (B, 3, H, W); the result is clipped to 0..255."""
    if op.op == "rotate":
        return rotate(x, float(op.value or 0.0))
    if op.op == "scale":
        return scale(x, float(op.value or 1.0))
    if op.op == "flip_h":
        return torch.flip(x, dims=(3,))
    return torch.flip(x, dims=(2,))


def test_views(tests: TransformTests) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The fixed test views: names, angles (V,) and scales (V,).

    Rotations are taken at scale 1, scales at angle 0, e.g. ``rot30`` and ``scale1.1``.
    """
    names = [f"rot{a:g}" for a in tests.rotations] + [f"scale{s:g}" for s in tests.scales]
    angles = [float(a) for a in tests.rotations] + [0.0] * len(tests.scales)
    scales = [1.0] * len(tests.rotations) + [float(s) for s in tests.scales]
    return (
        names,
        torch.tensor(angles, dtype=torch.float64),
        torch.tensor(scales, dtype=torch.float64),
    )


def random_views(views: RandomViews) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random views: angles uniform in [0, max_rotation), scales in [min, max].

    The draw uses its own CPU ``torch.Generator`` seeded with ``views.seed``, so the same views
    come out on every device and in every process.
    """
    g = torch.Generator(device="cpu").manual_seed(views.seed)
    u = torch.rand(2, views.count, generator=g, dtype=torch.float64)
    angles = u[0] * views.max_rotation
    scales = views.scale_min + u[1] * (views.scale_max - views.scale_min)
    return angles, scales


def expand_views(x: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Every image under every view: (B, 3, H, W) -> (B * V, 3, H, W), image-major."""
    b, v = x.shape[0], angles.shape[0]
    xs = x.repeat_interleave(v, dim=0)
    return warp(xs, angles.repeat(b), scales.repeat(b))


def describe(op: Operation) -> str:
    """A short human name for an operation, e.g. ``rotate 10°``."""
    if op.op in ("rotate", "scale"):
        unit = "°" if op.op == "rotate" else "×"
        return f"{op.op} {op.value:g}{unit}"
    return op.op


__all__ = [
    "affine_theta",
    "apply",
    "describe",
    "expand_views",
    "random_views",
    "rotate",
    "scale",
    "test_views",
    "warp",
]
