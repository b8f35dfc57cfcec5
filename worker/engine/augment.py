"""Per-step random transformations ("transformation robustness", as in Lucid / Lucent).

At every optimization step each image is seen under ``views`` random transformations: an integer
jitter (shift), then a rotation and a zoom about the center (bilinear, as in ``transforms.warp``),
what comes in from outside the image black or, with ``fill``, another color (the model's zero);
optionally a zoomed-in view moves off the center (a random crop,
as MACO's) and Gaussian noise is added. The parameters are drawn (``draw``) apart from being applied
(``apply``), from a seeded CPU ``torch.Generator`` that belongs to one image, so that a batch gives
the same draws as running its images one by one, on every device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specs import StepAugment
from worker.engine import determinism
from worker.engine import transforms as T
from worker.engine.images import check_images, to_device


@dataclass(frozen=True)
class Draw:
    """Parameters of V views: angles (V,) degrees, scales (V,), shifts (V, 2) int (dy, dx);
    optionally offsets (V, 2) of the view's center (x, y) in normalized coordinates (-1..1,
    ``affine_grid``'s) and noise (one seed per view, int64 (V,), with its std in pixels)."""

    angles: torch.Tensor
    scales: torch.Tensor
    shifts: torch.Tensor
    offsets: torch.Tensor | None = None
    noise_seeds: torch.Tensor | None = None
    noise: float = 0.0
    view_scale: float = 1.0


def image_seed(seed: int, target: int, initial_gray: float) -> int:
    """The seed of one image's generator, from the job's seed and what defines the image.

    It does not depend on the image's position in the batch, so batched equals one by one.
    """
    key = f"tivis:{seed}:{target}:{initial_gray:.4f}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(seed)


def draw(gen: torch.Generator, cfg: StepAugment) -> Draw:
    """``cfg.views`` random views: angle uniform in [-max_rotation, max_rotation], scale uniform
    in [scale_min, scale_max], shifts uniform integers in [-jitter, jitter].

    With ``translate``, the center of a view zoomed by s moves by up to ``translate * (1 - 1/s)``
    (normalized coordinates) along each axis: a crop that stays inside the image. With ``noise``,
    each view gets a seed for its noise. Always consumes the same amount of randomness for a
    given ``cfg`` (and none for the options it leaves off).
    """
    v = cfg.views
    u = torch.rand(2, v, generator=gen, dtype=torch.float64)
    shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (v, 2), generator=gen)
    angles = (2.0 * u[0] - 1.0) * cfg.max_rotation
    scales = cfg.scale_min + u[1] * (cfg.scale_max - cfg.scale_min)
    offsets = None
    if cfg.translate > 0:
        room = (1.0 - 1.0 / scales).clamp(min=0.0)[:, None]  # (V, 1)
        w = torch.rand(v, 2, generator=gen, dtype=torch.float64)
        offsets = (2.0 * w - 1.0) * cfg.translate * room
    seeds = None
    if cfg.noise > 0:
        seeds = torch.randint(0, 2**62, (v,), generator=gen)
    return Draw(angles, scales, shifts, offsets, seeds, cfg.noise, cfg.view_scale)


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move every image of ``x`` (N, C, H, W) down by ``dy`` and right by ``dx`` pixels.

    What comes in from the border is 0 (black); differentiable.
    """
    h, w = x.shape[-2], x.shape[-1]
    if abs(dy) >= h or abs(dx) >= w:
        return torch.zeros_like(x)
    p = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    top, left = max(-dy, 0), max(-dx, 0)
    return p[..., top : top + h, left : left + w]


def apply(x: torch.Tensor, draws: list[Draw], fill: torch.Tensor | None = None) -> torch.Tensor:
    """Every image under its own views: x (N, 3, H, W), one ``Draw`` of V views per image ->
    (N * V, 3, S, S), image-major, S = round(H × the draws' ``view_scale``); differentiable with
    respect to ``x``.

    ``fill`` (3,), pixel values: the color of what comes in from outside the image (default
    black). The views are those of ``x - fill`` with black fill, plus ``fill``.
    """
    check_images(x)
    if fill is not None:
        f = to_device(fill, x.device).to(x.dtype).view(1, -1, 1, 1)
        return _apply(x - f, draws, f) + f
    return _apply(x, draws, None)


def _clip(views: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """Views of ``x - fill`` clipped to ``-fill .. 255 - fill`` (``fill`` None: 0..255)."""
    if fill is None:
        return views.clamp(0.0, 255.0)
    return views.clamp(min=-fill, max=255.0 - fill)


def _apply(x: torch.Tensor, draws: list[Draw], fill: torch.Tensor | None) -> torch.Tensor:
    """``apply`` of ``x``, the picture minus ``fill`` (None: black), with black fill."""
    if len(draws) != x.shape[0]:
        raise ValueError(f"expected one draw per image ({x.shape[0]}), got {len(draws)}")
    if not draws:
        return x[:0]
    v = draws[0].angles.shape[0]
    size = round(int(x.shape[-1]) * draws[0].view_scale)
    if x.is_cuda and (draws[0].offsets is not None or size != x.shape[-1]):
        views = _clip(_jitter_and_crop(x, draws, size), fill)  # one sampling: no host pass
        return _add_noise(views, draws)
    out = []
    for i, d in enumerate(draws):
        for k in range(v):
            dy, dx = (int(s) for s in d.shifts[k])
            out.append(shift(x[i : i + 1], dy, dx))
    jittered = torch.cat(out)
    angles = torch.cat([d.angles for d in draws])  # CPU: decided here, moved by warp
    scales = torch.cat([d.scales for d in draws])
    if draws[0].offsets is not None or size != x.shape[-1] or fill is not None:
        views = crop(jittered, angles, scales, _offsets(draws), size, fill=fill)
    elif bool((angles == 0).all()) and bool((scales == 1).all()):
        views = jittered
    else:
        views = T.warp(jittered, angles, scales)
    return _add_noise(views, draws)


def _offsets(draws: list[Draw]) -> torch.Tensor:
    """The views' centers (N * V, 2), zeros where the draws have none."""
    if draws[0].offsets is not None:
        return torch.cat([d.offsets for d in draws if d.offsets is not None])
    return torch.zeros(sum(d.angles.shape[0] for d in draws), 2, dtype=torch.float64)


def _jitter_and_crop(x: torch.Tensor, draws: list[Draw], size: int) -> torch.Tensor:
    """``crop`` of the jittered views as ``apply`` makes them, in one sampling of all of them
    (the GPU's way: no pass per view on the host; the same values to float rounding), unclipped."""
    v = draws[0].angles.shape[0]
    angles = torch.cat([d.angles for d in draws])
    scales = torch.cat([d.scales for d in draws])
    theta = _theta(angles, scales, _offsets(draws), x)
    shifts = to_device(torch.cat([d.shifts for d in draws]), x.device)
    grid = F.affine_grid(theta, [theta.shape[0], x.shape[1], size, size], align_corners=False)
    return determinism.sample_bilinear(x.repeat_interleave(v, dim=0), grid, shifts)


def _add_noise(views: torch.Tensor, draws: list[Draw]) -> torch.Tensor:
    if draws[0].noise_seeds is not None and draws[0].noise > 0:
        shape = tuple(views.shape[1:])
        noise = [
            torch.randn(shape, generator=generator(int(s))) * d.noise
            for d in draws
            for s in (d.noise_seeds if d.noise_seeds is not None else [])
        ]
        views = views + to_device(torch.stack(noise), views.device).to(views.dtype)
    return views


def crop(
    x: torch.Tensor,
    degrees: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    size: int | None = None,
    *,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate and zoom each image of ``x`` (N, 3, H, W) about the point ``offsets`` (N, 2),
    (x, y) in normalized coordinates: the view centered there, resampled to ``size`` × ``size``
    pixels (default: H × W). A zoom s shows ``H / s`` pixels of the image on ``size`` pixels.

    Bilinear, black fill outside the image, clipped to 0..255; differentiable. With ``fill``
    (1, 3, 1, 1), ``x`` is a picture minus ``fill`` (``apply``'s way to fill with a color) and
    the views are clipped to ``-fill .. 255 - fill``.
    """
    check_images(x)
    theta = _theta(degrees, scales, offsets, x)
    shape = list(x.shape) if size is None else [x.shape[0], x.shape[1], size, size]
    grid = F.affine_grid(theta, shape, align_corners=False)
    return _clip(determinism.grid_sample(x, grid), fill)


def _theta(
    degrees: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``affine_grid``'s matrices of views centered at ``offsets``, for ``x``: made where the
    parameters are (the CPU, for every caller in tivis), sent without a wait."""
    theta = T.affine_theta(degrees.to(x.dtype), scales.to(x.dtype)).clone()
    theta[:, :, 2] = offsets.to(theta)
    return to_device(theta, x.device)


__all__ = ["Draw", "apply", "crop", "draw", "generator", "image_seed", "shift"]
