"""BatchNorm and zero padding folded into the convolutions: the same function at about
two thirds to three quarters of the cost of a forward+backward on the CPU (``benchmarks/fold.py``:
efficientnet_lite0 on 2 threads, 4 views of 176 px 0.168 s → 0.112 s, one 224 px image
0.095 s → 0.069 s; a whole ``invariant+`` step, which also renders, samples its views and sums
the BatchNorm prior, about 0.85 times as long).

In eval mode a ``BatchNorm2d`` is a per-channel affine map, ``y = γ (x − μ) / √(σ² + ε) + β``; after
a convolution it can be merged into the convolution's weights and bias (``torch.nn.utils.fusion``),
which saves the BatchNorm's own pass over every feature map and its backward.

Which convolution feeds which BatchNorm is read from one forward pass, not from module order: a
pair is folded only when the BatchNorm's input is the very tensor the convolution returned and each
runs once per pass. The folded net must then give the same logits on a test picture, or the net
is left as it was. Each folded BatchNorm is replaced by a ``FoldedBatchNorm``, which passes its
input through and keeps the statistics, so that the BatchNorm prior (``bnprior``) and the hooks of
``skipgrad`` still find the layer where it was. torch.fx cannot do this: its graph module inlines
the blocks that those hooks attach to.

EfficientNet-Lite (efficientnet_lite_pytorch) also copies every map into a zero-padded one before
its convolution (TensorFlow's "same" padding, ``nn.ZeroPad2d`` inside ``Conv2dStaticSamePadding``);
where that padding is the same on both sides (every stride-1 layer), the convolution's own padding
gives the same sums without the copy and its backward (``fold_padding``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

LOGIT_TOLERANCE = 1e-3
"""The folded net's logits on the test picture may differ from the net's by at most this much
times (1 + the largest absolute logit); float32 rounding gives about 1e-5."""


class FoldedBatchNorm(nn.Module):
    """Where a folded ``BatchNorm2d`` was: forward passes its input ``y`` (the BatchNorm's output,
    now made by the convolution) through. It keeps the BatchNorm's running statistics and the
    per-channel map back to the BatchNorm's input, ``x = y · scale + shift``."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        mean, var = bn.running_mean, bn.running_var
        if mean is None or var is None or bn.weight is None or bn.bias is None:
            raise ValueError("only a BatchNorm2d with running statistics and an affine folds")
        s = torch.sqrt(var + bn.eps)
        self.register_buffer("running_mean", mean.detach().clone())
        self.register_buffer("running_var", var.detach().clone())
        self.register_buffer("scale", (s / bn.weight).detach().clone())
        self.register_buffer("shift", (mean - bn.bias * s / bn.weight).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _foldable(bn: nn.BatchNorm2d) -> bool:
    return (
        bn.running_mean is not None
        and bn.running_var is not None
        and bn.weight is not None
        and bn.bias is not None
        and bool(torch.all(bn.weight.abs() > 1e-12))  # γ = 0 has no way back to the input
    )


def find_pairs(net: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every ``Conv2d`` whose output goes straight into a foldable
    ``BatchNorm2d``, read from one forward pass of ``net`` on ``x``; both called exactly once."""
    return _pairs_and_output(net, x)[0]


def _pairs_and_output(net: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, str]], Any]:
    """``find_pairs`` and the output of its forward pass (the reference for the folded net)."""
    calls: dict[str, int] = {}
    made_by: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> (conv, output kept alive)
    fed: dict[str, str] = {}  # BatchNorm name -> conv name
    handles = []

    def on_conv(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            made_by[id(out)] = (name, out)

        return hook

    def on_bn(name: str) -> Any:
        def hook(_m: nn.Module, inp: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            src = made_by.get(id(inp[0]))
            if src is not None and src[1] is inp[0]:
                fed[name] = src[0]

        return hook

    for name, m in net.named_modules():
        if type(m) is nn.BatchNorm2d and _foldable(m):
            handles.append(m.register_forward_pre_hook(on_bn(name)))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv(name)))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for b, c in fed.items() if calls.get(b) == 1 and calls.get(c) == 1], out


def _set(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def _padding_to_fold(m: nn.Module) -> tuple[int, int] | None:
    """(top, left) when ``m`` is an efficientnet_lite_pytorch convolution whose zero padding is
    the same on both sides; else None."""
    try:
        from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
    except ImportError:  # the package is not installed: none of its layers either
        return None
    pad = getattr(m, "static_padding", None)
    if type(m) is not Conv2dStaticSamePadding or not isinstance(pad, nn.ZeroPad2d):
        return None
    left, right, top, bottom = pad.padding
    if left != right or top != bottom or tuple(cast(nn.Conv2d, m).padding) != (0, 0):
        return None
    return top, left


def fold_padding(net: nn.Module) -> int:
    """Replace, in place, each efficientnet_lite_pytorch convolution that pads both sides alike
    by a plain ``nn.Conv2d`` padding by itself; return how many. Other nets have none."""
    n = 0
    for name, m in list(net.named_modules()):
        pad = _padding_to_fold(m)
        if pad is None:
            continue
        conv = cast(nn.Conv2d, m)
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=pad,
            dilation=conv.dilation,  # type: ignore[arg-type]
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        plain.load_state_dict(conv.state_dict())
        plain.requires_grad_(any(p.requires_grad for p in conv.parameters()))
        _set(net, name, plain)
        n += 1
    return n


def fold(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of the eval-mode ``net`` with symmetric padding folded into its convolutions
    (``fold_padding``) and every BatchNorm that directly follows a convolution folded into it
    (``find_pairs`` on the test picture ``x``), if its logits on ``x`` match the net's; else
    ``net`` itself. Nets that are not plain ``nn.Module`` trees (TorchScript, exported programs)
    and nets with nothing to fold come back unchanged."""
    if isinstance(net, torch.jit.ScriptModule) or not isinstance(net, nn.Module) or net.training:
        return net
    pairs, reference = _pairs_and_output(net, x)
    if not pairs and not any(_padding_to_fold(m) is not None for m in net.modules()):
        return net  # nothing to fold: no copy
    out = copy.deepcopy(net)
    fold_padding(out)  # the convolutions keep their names: the pairs still hold
    for conv_name, bn_name in pairs:
        conv = cast(nn.Conv2d, out.get_submodule(conv_name))
        bn = cast(nn.BatchNorm2d, out.get_submodule(bn_name))
        mean, var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, mean, var, bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = (nn.Parameter(w.detach(), False), nn.Parameter(b.detach(), False))
        _set(out, bn_name, FoldedBatchNorm(bn))
    with torch.no_grad():
        want, got = _logits(reference), _logits(out(x))
    err = float((want - got).abs().max())
    if not err <= LOGIT_TOLERANCE * (1.0 + float(want.abs().max())):
        log.warning("nothing folded: the folded net's logits differ by %.3g", err)
        return net
    return out


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[no-any-return]
