"""A prior from the model's own BatchNorm statistics (DeepInversion, Yin et al. 2020): a picture
whose features have, layer by layer, the mean and variance the model saw on its training photos.

Every ``BatchNorm2d`` keeps the running mean and variance of its input over the training set. For
one view ``x`` of a picture, the distance sums ``layer_distance`` over those layers,
``‖μ(x) − running_mean‖₂ + ‖σ²(x) − running_var‖₂``, the mean and variance taken per channel
over the view's positions (every 4th one in the large maps of the first layers, where nearly all
of the cost is). The engine subtracts ``weight × distance`` from each view's objective
(``optimizer.bn_prior``). It is computed from the forward pass the step makes anyway, by hooks on
the layers' inputs: no extra pass. Per view, so it does not depend on how views and images are
grouped into passes (batched equals one by one).

A BatchNorm folded into the convolution before it (``fold``, how the registry loads models) is
a ``FoldedBatchNorm``: its hook sees the layer's output and maps the statistics back to its input
through the layer's affine, so the distance is the same up to float32 rounding.

Models without ``BatchNorm2d`` (VGG) and nets this module cannot look into (exported programs,
plain functions) get no prior (``collect`` yields a collector with no layers).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn

from worker.engine.fold import FoldedBatchNorm


def bn_layers(net: nn.Module) -> list[nn.BatchNorm2d | FoldedBatchNorm]:
    """The ``BatchNorm2d`` layers of ``net`` that keep running statistics and those folded into
    the convolution before them (``fold``), in module order."""
    return [
        m
        for m in net.modules()
        if isinstance(m, FoldedBatchNorm)
        or (
            isinstance(m, nn.BatchNorm2d)
            and m.running_mean is not None
            and m.running_var is not None
        )
    ]


STRIDE, STRIDE_FROM = 4, 1024
"""Maps of at least 1,024 positions give their statistics from every 4th position (row-major
order): a quarter of the cost where it is spent; smaller maps use all of theirs."""


def _positions(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (N, C, H, W) as float32 (N, H*W, C), and the positions used of it (N, P, C): every
    ``STRIDE``-th of maps of at least ``STRIDE_FROM``, else all. Views when x is channels-last
    (the engine's default) and float32."""
    flat = x.float().permute(0, 2, 3, 1).flatten(1, 2)
    return flat, flat[:, ::STRIDE] if flat.shape[1] >= STRIDE_FROM else flat


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """μ and σ² (N, C) of ``x`` over the positions used; σ² as E[x²] − μ²: the cheapest forward
    and backward here (about half of torch.var_mean's)."""
    y = _positions(x)[1]
    mu = y.mean(dim=1)
    return mu, y.square().mean(dim=1) - mu.square()


def _unit(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) ‖d‖₂ over dim 1 and d / ‖d‖₂ (0 where the norm is 0, as autograd's norm gives)."""
    n = torch.linalg.vector_norm(d, dim=1)
    return n, torch.where(n[:, None] > 0, d / n[:, None], torch.zeros_like(d))


class _LayerDistance(torch.autograd.Function):
    """``layer_distance`` as one autograd node with its gradient written out: autograd through
    its dozen small operations in each of lite0's 49 layers cost more than their arithmetic;
    written out, an ``invariant+`` step takes 0.92 of the time on the 2-core CPU
    (``benchmarks/bnprior.py``). The same forward operations; the gradient of
    d = ‖μ' − m‖ + ‖σ'² − v‖, with μ' = μ·s + t and σ'² = σ²·s² (s = 1, t = 0 without the affine)
    and μ, σ² = E[y] − …, E[y²] − μ² over the P positions used, is, per position,
    ∂d/∂y = (u_m·s − 2μ·u_v·s²) / P + y · 2·u_v·s² / P with u the unit vectors of the norms."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        scale: torch.Tensor | None,
        shift: torch.Tensor | None,
    ) -> torch.Tensor:
        mu, var_x = _stats(x)
        # per channel, d μ'/d μ and d σ'²/d σ² (1 without the affine)
        s, s2 = (scale.float(), scale.float().square()) if scale is not None else (1.0, 1.0)
        t = shift.float() if shift is not None else 0.0
        n_m, u_m = _unit(mu * s + t - mean.float())
        n_v, u_v = _unit(var_x * s2 - var.float())
        u_m, u_v = u_m * s, u_v * s2  # back through the affine
        ctx.save_for_backward(x, mu, u_m, u_v)
        return n_m + n_v

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mu, u_m, u_v = ctx.saved_tensors
        flat, used = _positions(x)
        p = used.shape[1]
        gv = g[:, None] * u_v * (2.0 / p)  # (N, C)
        a = g[:, None] * u_m / p - mu * gv
        gy = torch.addcmul(a[:, None, :], used, gv[:, None, :])  # (N, P, C)
        n, c, h, w = x.shape
        if p < flat.shape[1]:  # the positions not used get no gradient
            gx = torch.zeros((n, h, w, c), dtype=gy.dtype, device=gy.device)
            gx.view(n, h * w, c)[:, ::STRIDE] = gy
        else:
            gx = gy.view(n, h, w, c)
        return gx.permute(0, 3, 1, 2).to(x.dtype), None, None, None, None


def layer_distance(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N,) float32: ``‖μ − mean‖₂ + ‖σ² − var‖₂`` for each of the N feature maps of ``x``
    (N, C, H, W), μ and σ² (biased) per channel over H × W (over every ``STRIDE``-th position of
    maps of at least ``STRIDE_FROM``). With ``affine`` = (scale, shift), per channel, the
    statistics are those of ``x · scale + shift`` (a folded BatchNorm's input, from its output).
    Differentiable in ``x`` only (the statistics are buffers)."""
    scale, shift = affine if affine is not None else (None, None)
    out: torch.Tensor = _LayerDistance.apply(x, mean, var, scale, shift)
    return out


def autograd_distance(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``layer_distance`` with every operation recorded by autograd: the engine's before, and
    the reference its written-out gradient is tested and timed against."""
    mu, var_x = _stats(x)
    if affine is not None:
        scale, shift = affine[0].float(), affine[1].float()
        mu, var_x = mu * scale + shift, var_x * scale.square()
    d_mean = torch.linalg.vector_norm(mu - mean.float(), dim=1)
    d_var = torch.linalg.vector_norm(var_x - var.float(), dim=1)
    out: torch.Tensor = d_mean + d_var
    return out


class Collector:
    """What a model's hooks add up during the forward passes of one ``collect`` block."""

    def __init__(self, layers: int) -> None:
        self.layers = layers
        self.active = False
        self._sum: torch.Tensor | None = None

    def add(self, d: torch.Tensor) -> None:
        self._sum = d if self._sum is None else self._sum + d

    def take(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) the distance of each view of the last forward pass (zeros without layers); the
        sum is cleared for the next pass."""
        out, self._sum = self._sum, None
        if out is None:
            return torch.zeros(n, device=device)
        if out.shape[0] != n:  # a forward pass the caller did not make went through the hooks
            raise RuntimeError(f"BatchNorm prior: {out.shape[0]} views collected, expected {n}")
        return out


_COLLECTORS: weakref.WeakKeyDictionary[nn.Module, Collector] = weakref.WeakKeyDictionary()
"""Each model's hooks, looked up by the model itself (nothing is set on it; gone with it)."""


def _collector(net: nn.Module) -> Collector:
    """The model's hooks, registered once; inactive outside ``collect`` and without gradients
    (evaluation passes), where they return at once."""
    col = _COLLECTORS.get(net)
    if col is None:
        layers = bn_layers(net)
        col = Collector(len(layers))
        c = col

        def hook(m: nn.Module, inp: tuple[Any, ...]) -> None:
            if c.active and torch.is_grad_enabled():
                bn = cast(nn.BatchNorm2d | FoldedBatchNorm, m)
                affine = (bn.scale, bn.shift) if isinstance(bn, FoldedBatchNorm) else None
                c.add(
                    layer_distance(
                        inp[0],
                        cast(torch.Tensor, bn.running_mean),
                        cast(torch.Tensor, bn.running_var),
                        affine,
                    )
                )

        for m in layers:
            m.register_forward_pre_hook(hook)
        _COLLECTORS[net] = col
    return col


@contextmanager
def collect(net: nn.Module, on: bool) -> Iterator[Collector]:
    """Within the block (when ``on``), every forward pass with gradients through ``net`` adds up
    each view's BatchNorm distance, to be read with ``take`` after the pass. Off, or for a net
    that is not an ``nn.Module``, the collector has no layers and ``take`` gives zeros. The hooks
    are inactive again on exit, also on errors."""
    if not on or not isinstance(net, nn.Module):
        yield Collector(0)
        return
    col = _collector(net)
    col.active, col._sum = True, None
    try:
        yield col
    finally:
        col.active, col._sum = False, None
