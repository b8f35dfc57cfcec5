"""Run-to-run determinism on CUDA: the same spec and seed give the same bytes on the same GPU.

Three things stand between a CUDA run and repeatable bytes, each handled here or where it arises:

- cuDNN and cuBLAS pick algorithms that add in a varying order: ``deterministic(True)`` asks
  PyTorch for deterministic ones (``torch.use_deterministic_algorithms``, cuDNN's deterministic
  flag, cuBLAS's fixed workspace);
- two ops on the gradient path have only atomic (unordered) backward kernels on CUDA and raise in
  that mode: ``grid_sample`` (the random views, replaced by ``sample_bilinear``, a gather whose
  backward PyTorch makes deterministic) and ``AdaptiveAvgPool2d`` (the classifiers' global
  pooling, replaced by ``GlobalPool``, a mean, when a model is loaded onto a GPU);
- everything else in the engine already is deterministic (elementwise ops, reductions, gathers).

On the CPU, PyTorch's kernels are deterministic as they are, and Intel MKL's matrix products
are made so by ``MKL_CBWR`` (set when ``worker.engine`` is imported); nothing here changes what
the CPU computes.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn


def deterministic(on: bool = True) -> None:
    """Make CUDA runs repeatable (``on``) or let PyTorch choose the fastest kernels again.

    Process-wide, as PyTorch's switches are. An op with no deterministic CUDA kernel warns
    instead of failing (``warn_only``), so a model with an unexpected layer still runs.
    """
    if on:
        # cuBLAS reads it when it makes its first handle (before that, setting it is enough)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    try:  # no NaN-filling of fresh buffers (what deterministic mode does by default): not needed
        import torch.utils.deterministic as det

        det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    except ImportError:  # an older PyTorch: it has no such filling
        pass


def is_deterministic() -> bool:
    return bool(torch.are_deterministic_algorithms_enabled())


def sample_bilinear(
    x: torch.Tensor, grid: torch.Tensor, shifts: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.grid_sample(x, grid, "bilinear", "zeros", align_corners=False)`` as four gathers.

    Hand-written because ``grid_sample``'s CUDA backward adds atomically (no deterministic
    kernel); a gather's backward is a ``scatter_add``, which PyTorch makes deterministic in
    deterministic mode. Forward values agree with ``grid_sample`` to float rounding.

    ``shifts`` (N, 2) integer (dy, dx), when given: each image is first moved down by dy and
    right by dx pixels with black fill (``augment.shift``), in the same gathers.
    """
    n, c, h, w = x.shape
    _, ho, wo, _ = grid.shape
    gx = ((grid[..., 0] + 1.0) * w - 1.0) * 0.5  # pixel coordinates (align_corners=False)
    gy = ((grid[..., 1] + 1.0) * h - 1.0) * 0.5
    x0, y0 = gx.floor(), gy.floor()
    fx, fy = gx - x0, gy - y0
    x0l, y0l = x0.long(), y0.long()
    flat = x.reshape(n, c, h * w)
    out = x.new_zeros(n, c, ho * wo)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0l + dx, y0l + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            if shifts is not None:  # the pixel of the shifted image comes from here
                xi = xi - shifts[:, 1, None, None]
                yi = yi - shifts[:, 0, None, None]
                inside &= (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(n, 1, ho * wo)
            weight = (wy * wx * inside).view(n, 1, ho * wo).to(x.dtype)
            out = out + flat.gather(2, idx.expand(n, c, ho * wo)) * weight
    return out.view(n, c, ho, wo)


def grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling with black fill: ``sample_bilinear`` where a CUDA backward will run in
    deterministic mode, else ``F.grid_sample`` (its forward, and its CPU backward, are exact)."""
    if x.is_cuda and x.requires_grad and torch.is_grad_enabled() and is_deterministic():
        return sample_bilinear(x, grid)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class GlobalPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` without its atomic CUDA backward: a mean for a 1×1 output, the
    input itself when it already has the output's size, else the adaptive pool."""

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        self.output_size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh, ow = self.output_size
        if (oh, ow) == (1, 1):
            return x.mean(dim=(-2, -1), keepdim=True)
        if (oh in (None, x.shape[-2])) and (ow in (None, x.shape[-1])):
            return x
        return F.adaptive_avg_pool2d(x, self.output_size)  # type: ignore[arg-type]


def replace_adaptive_pools(net: nn.Module) -> int:
    """Swap every ``nn.AdaptiveAvgPool2d`` of ``net`` for a ``GlobalPool`` (in place); how many."""
    if isinstance(net, torch.jit.ScriptModule):  # scripted: its graph cannot be edited here
        return 0
    count = 0
    for parent in net.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.AdaptiveAvgPool2d:
                setattr(parent, name, GlobalPool(child.output_size))  # type: ignore[arg-type]
                count += 1
    return count


__all__ = [
    "GlobalPool",
    "deterministic",
    "grid_sample",
    "is_deterministic",
    "replace_adaptive_pools",
    "sample_bilinear",
]
