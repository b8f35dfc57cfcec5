"""Skip gradients (SGM, Wu et al. 2020, "Skip Connections Matter"): during the optimization, the
gradient that flows back through each residual branch is scaled by ``gamma`` (0 < gamma <= 1), so
more of it comes through the skip connections. The forward pass is unchanged, bit for bit.

Adversarial examples made this way transfer better to other models; here the pictures of a class
are recognized more often by a model that did not make them (measured in ``benchmarks/quality.py``:
efficientnet_lite0 generating, efficientnet_lite1 judging). Models without residual blocks that
this module knows (VGG, Inception v3, exported programs) are left as they are.

The same hooks also drop branches at random (``stochastic_depth``, Huang et al. 2016): for a
forward pass with gradients, a 0/1 factor per branch and sample, drawn from each image's own
generator (``draw_keep``), so a step optimizes the picture for many thinner models at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


class _ScaleGrad(torch.autograd.Function):
    """Identity forward (a copy: a block may add its skip in place), gradient times ``gamma``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: float) -> torch.Tensor:
        ctx.gamma = gamma
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.gamma, None


def scale_grad(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x`` unchanged; the gradient flowing back through the result is scaled by ``gamma``."""
    out: torch.Tensor = _ScaleGrad.apply(x, gamma)
    return out


def _mbconv_with_skip(m: nn.Module) -> bool:
    """An EfficientNet(-Lite) MBConv block (``efficientnet_lite_pytorch``) that adds its input."""
    args = getattr(m, "_block_args", None)
    return (
        args is not None
        and isinstance(getattr(m, "_bn2", None), nn.Module)
        and bool(getattr(m, "id_skip", False))
        and args.stride == 1  # the block's own test (a list stride never adds the skip)
        and args.input_filters == args.output_filters
    )


def residual_branches(net: nn.Module) -> list[nn.Module]:
    """The last module of every residual branch of ``net`` whose output is added to a skip path:
    ``_bn2`` of EfficientNet(-Lite) blocks with a skip, ``bn2`` / ``bn3`` of torchvision's ResNet
    ``BasicBlock`` / ``Bottleneck``. Empty for other architectures."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out: list[nn.Module] = []
    for m in net.modules():
        if _mbconv_with_skip(m):
            out.append(cast(nn.Module, m._bn2))
        elif isinstance(m, Bottleneck):
            out.append(m.bn3)
        elif isinstance(m, BasicBlock):
            out.append(m.bn2)
    return out


class _State:
    """What a model's branch hooks apply now: the gradient factor (1: none) and, for the next
    forward pass, which branches each sample keeps (None: all). One per model (``_STATES``)."""

    def __init__(self, branches: int) -> None:
        self.gamma = 1.0
        self.branches = branches
        self.keep: torch.Tensor | None = None  # (branches, N) 0/1 for the next forward pass


_STATES: weakref.WeakKeyDictionary[nn.Module, _State] = weakref.WeakKeyDictionary()
"""Each model's hooks, looked up by the model itself (nothing is set on it; gone with it)."""


def _state(net: nn.Module) -> _State:
    """The model's hooks, registered once (so a compiled model sees the same hooks every time;
    a factor of 1 makes them return the output untouched)."""
    state = _STATES.get(net)
    if state is None:
        branches = residual_branches(net)
        state = _State(len(branches))
        st = state

        def make_hook(j: int) -> Any:
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor | None:
                res = None
                if st.keep is not None and torch.is_grad_enabled():
                    keep = st.keep[j].to(out.dtype)
                    if keep.shape[0] < out.shape[0]:  # a padded GPU pass: padding keeps all
                        keep = F.pad(keep, (0, out.shape[0] - keep.shape[0]), value=1.0)
                    res = out * keep.view(-1, *([1] * (out.dim() - 1)))
                if st.gamma < 1.0:
                    res = scale_grad(out if res is None else res, st.gamma)
                return res

            return hook

        for j, b in enumerate(branches):
            b.register_forward_hook(make_hook(j))
        _STATES[net] = state
    return state


@contextmanager
def skip_gradients(net: nn.Module, gamma: float) -> Iterator[int]:
    """Within the block, backward passes through ``net`` scale every residual branch's gradient
    by ``gamma``; yields how many branches that is. ``gamma == 1`` changes nothing (a model
    never asked for less gets no hooks). On exit, also on errors, the factor is reset, so a
    cached model computes plain gradients again."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if gamma == 1.0 or not isinstance(net, nn.Module):  # e.g. a plain function: nothing to hook
        yield 0
        return
    state = _state(net)
    before, state.gamma = state.gamma, gamma
    try:
        yield state.branches
    finally:
        state.gamma = before


@contextmanager
def stochastic_depth(net: nn.Module, p: float) -> Iterator[_State | None]:
    """Within the block, drop the residual branches of ``net`` at random (stochastic depth,
    Huang et al. 2016): yields the model's branch state, whose ``keep`` (branches, N), set before
    a forward pass with gradients, says which branches each of its N samples keeps (a dropped
    branch adds nothing; the skip path stays). ``p == 0`` or a net without known residual branches
    yields None. On exit, also on errors, every branch is kept again."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the drop probability must be in [0, 1), got {p}")
    if p == 0.0 or not isinstance(net, nn.Module):
        yield None
        return
    state = _state(net)
    if not state.branches:
        yield None
        return
    state.keep = None
    try:
        yield state
    finally:
        state.keep = None


def draw_keep(gen: torch.Generator, views: int, branches: int, p: float) -> torch.Tensor:
    """(branches, views) 0/1: which branches each of an image's ``views`` keeps this step, each
    kept with probability ``1 - p``, from the image's own generator."""
    return (torch.rand(views, branches, generator=gen) >= p).float().t()
