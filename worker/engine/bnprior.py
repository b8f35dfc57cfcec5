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


class _Moments(torch.autograd.Function):
    """(N, W) float32 μ and E[y²] of ``x`` (N, C, H, W) per channel over the positions used,
    zero from channel C to ``width`` W, as one autograd node with its gradient written out:
    ∂/∂y of μ is 1/P and of E[y²] is 2y/P, so the map's gradient is one ``addcmul`` (0 at the
    positions not used)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = _positions(x)[1]
        ctx.save_for_backward(x)
        n, c = y.shape[0], y.shape[2]
        mu, m2 = y.new_zeros((n, width)), y.new_zeros((n, width))
        mu[:, :c], m2[:, :c] = y.mean(dim=1), y.square().mean(dim=1)
        return mu, m2

    @staticmethod
    def backward(ctx: Any, g_mu: torch.Tensor, g_m2: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        flat, used = _positions(x)
        n, c, h, w = x.shape
        p = used.shape[1]
        a, b = (g_mu[:, :c] / p)[:, None, :], (g_m2[:, :c] * (2.0 / p))[:, None, :]
        gy = torch.addcmul(a, used, b)  # (N, P, C)
        if p < flat.shape[1]:  # the positions not used get no gradient
            gx = torch.zeros((n, h, w, c), dtype=gy.dtype, device=gy.device)
            gx.view(n, h * w, c)[:, ::STRIDE] = gy
        else:
            gx = gy.view(n, h, w, c)
        return gx.permute(0, 3, 1, 2).to(x.dtype), None


Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]
"""A layer's running mean and variance and, folded, the affine back to its input."""


def layer_stats(bn: nn.BatchNorm2d | FoldedBatchNorm) -> Stats:
    """(running mean, running variance, scale, shift) of a layer ``bn_layers`` found; scale and
    shift are None where the BatchNorm is not folded (its input is the map itself)."""
    mean, var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)
    if isinstance(bn, FoldedBatchNorm):
        return mean, var, bn.scale, bn.shift
    return mean, var, None, None


class _Layers:
    """The running statistics and affines of a sequence of layers as (L, W) rows, zero past each
    layer's channels (W: the most channels), so that the distances of all the layers of a pass
    are a dozen operations on their (N, L, W) statistics instead of a dozen per layer (lite0 has
    49; on the 2-core CPU their fixed cost per operation was most of the prior's). Zero rows
    past a layer's channels give distances of exactly 0 there. Only elementwise operations and
    reductions along the last dimension: deterministic and the same for each view however many
    go through together, on the CPU and CUDA alike (a segmented ``index_add_`` is not, on CUDA)."""

    def __init__(self, stats: list[Stats], width: int) -> None:
        self.width = width

        def rows(ts: list[torch.Tensor]) -> torch.Tensor:
            out = torch.zeros((len(ts), self.width), device=ts[0].device)
            for i, t in enumerate(ts):
                out[i, : t.numel()] = t.detach().float()
            return out

        self.mean = rows([m for m, _, _, _ in stats])
        self.var = rows([v for _, v, _, _ in stats])
        self.scale = rows([s if s is not None else torch.ones_like(m) for m, _, s, _ in stats])
        self.shift = rows([t if t is not None else torch.zeros_like(m) for m, _, _, t in stats])

    def distance(self, mu: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        """(N,) the sum over the layers of ‖μ' − mean‖₂ + ‖σ'² − var‖₂, from μ and E[y²]
        (N, L, W); μ' = μ·scale + shift and σ'² = (E[y²] − μ²)·scale²."""
        d_m = mu * self.scale + self.shift - self.mean
        d_v = (m2 - mu.square()) * self.scale.square() - self.var
        norms: torch.Tensor = torch.linalg.vector_norm(d_m, dim=2)
        norms = norms + torch.linalg.vector_norm(d_v, dim=2)
        return norms.sum(dim=1)


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
    mu, m2 = _Moments.apply(x, x.shape[1])
    return _Layers([(mean, var, scale, shift)], x.shape[1]).distance(mu[:, None], m2[:, None])


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
    """What a model's hooks collect during the forward passes of one ``collect`` block: each
    layer's μ and E[y²] per view, made into distances all at once by ``take``."""

    def __init__(self, layers: list[nn.BatchNorm2d | FoldedBatchNorm]) -> None:
        self.layers = len(layers)
        self.active = False
        self.every = 1  # the layers collected: every k-th (``collect``'s ``every``)
        self._bns = layers
        self._seen: list[int] = []  # the layers of this pass, in the order they ran
        self._mu: list[torch.Tensor] = []
        self._m2: list[torch.Tensor] = []
        self._cache: dict[tuple[int, ...], _Layers] = {}  # one pass's layers: the same each pass
        self.width = max(
            (int(cast(torch.Tensor, m.running_mean).numel()) for m in layers), default=0
        )

    def add(self, layer: int, mu: torch.Tensor, m2: torch.Tensor) -> None:
        self._seen.append(layer)
        self._mu.append(mu)
        self._m2.append(m2)

    def clear(self) -> None:
        self._seen, self._mu, self._m2 = [], [], []

    def _layers(self, key: tuple[int, ...]) -> _Layers:
        got = self._cache.get(key)
        if got is None:
            stats = [layer_stats(self._bns[i]) for i in key]
            got = self._cache[key] = _Layers(stats, self.width)
        return got

    def take(self, n: int, device: torch.device) -> torch.Tensor:
        """(n,) the distance of each view of the last forward pass (zeros without layers); what
        was collected is cleared for the next pass."""
        key, mu, m2 = tuple(self._seen), self._mu, self._m2
        self.clear()
        if not key:
            return torch.zeros(n, device=device)
        got = mu[0].shape[0]
        if got < n:  # a forward pass the caller did not make went through the hooks
            raise RuntimeError(f"BatchNorm prior: {got} views collected, expected {n}")
        mus, m2s = torch.stack(mu, dim=1), torch.stack(m2, dim=1)
        if got > n:  # the padding rows of the pass (models.bucket): not views
            mus, m2s = mus[:n], m2s[:n]
        return self._layers(key).distance(mus, m2s)


_COLLECTORS: weakref.WeakKeyDictionary[nn.Module, Collector] = weakref.WeakKeyDictionary()
"""Each model's hooks, looked up by the model itself (nothing is set on it; gone with it)."""


def _collector(net: nn.Module) -> Collector:
    """The model's hooks, registered once; inactive outside ``collect`` and without gradients
    (evaluation passes), where they return at once."""
    col = _COLLECTORS.get(net)
    if col is None:
        layers = bn_layers(net)
        col = Collector(layers)
        c = col

        def hook_for(i: int) -> Any:
            def hook(m: nn.Module, inp: tuple[Any, ...]) -> None:
                if c.active and i % c.every == 0 and torch.is_grad_enabled():
                    c.add(i, *_Moments.apply(inp[0], c.width))

            return hook

        for i, m in enumerate(layers):
            m.register_forward_pre_hook(hook_for(i))
        _COLLECTORS[net] = col
    return col


@contextmanager
def collect(net: nn.Module, on: bool, every: int = 1) -> Iterator[Collector]:
    """Within the block (when ``on``), every forward pass with gradients through ``net`` adds up
    each view's BatchNorm distance over every ``every``-th of its layers (in module order, from
    the first), to be read with ``take`` after the pass. Off, or for a net that is not an
    ``nn.Module``, the collector has no layers and ``take`` gives zeros. The hooks are inactive
    again on exit, also on errors.

    The prior's cost is nearly the same for every layer (a dozen small operations forward and
    backward, whatever the map's size), so every 4th layer costs about a quarter (lite0's 49
    layers: +7 ms on a 70 ms ``invariant+`` step on the 2-core CPU, against +28 ms for all)."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    if not on or not isinstance(net, nn.Module):
        yield Collector([])
        return
    col = _collector(net)
    col.active, col.every = True, every
    col.clear()
    try:
        yield col
    finally:
        col.active, col.every = False, 1
        col.clear()
