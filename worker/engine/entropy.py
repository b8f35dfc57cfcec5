"""Gray levels and 2D entropy (paper section 2.2; SPEC "Gray levels and entropy").

Everything here is a pure function of tensors: device and dtype come from the input, nothing is
written or printed. Gray images are integer tensors ``(B, H, W)`` with values 0..255; entropies
are float64 in bits.

A pixel's 2D-entropy pair is ``(i, j)``: ``i`` its gray and ``j`` the floor of the mean gray of
its 3×3 neighborhood (replicate padding at the edges). Pairs are coded as ``i * 256 + j`` and
counted by sorting, so every window of a map is handled in one batched call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specs import EntropySettings
from worker.engine import images

__all__ = [
    "EntropyReport",
    "best_gray",
    "entropy2d",
    "entropy_map",
    "gray",
    "gray_change",
    "measure",
    "neighbor_mean",
    "second_order_map",
    "second_order_total",
]

_LEVELS = 256
# Guard for the quantization of the first map: a window at the maximum entropy log2(n) must map
# to 255 even when the float product lands a hair below it.
_QUANT_EPS = 1e-9


def gray(x: torch.Tensor) -> torch.Tensor:
    """BT.601 gray of 8-bit images (paper equation 3), in exact integer arithmetic.

    Float input is first quantized to 8 bits like a saved PNG (``images.to_uint8``: round half
    to even, clip). Then ``Gray = floor(0.3 R + 0.59 G + 0.11 B)`` is computed as
    ``(30 R + 59 G + 11 B) // 100``, so that e.g. a gray of 10 stays 10 (float arithmetic gives
    ``floor(9.9999...) = 9``).

    Args:
        x: images (B, 3, H, W), pixel space 0..255, float or uint8.

    Returns:
        Gray images (B, H, W), int64, values 0..255.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.is_floating_point():
        u8 = images.to_uint8(x)
    elif x.dtype == torch.uint8:
        u8 = x
    else:
        raise ValueError(f"expected float (pixel space 0..255) or uint8 images, got {x.dtype}")
    c = u8.to(torch.int64)
    return (30 * c[:, 0] + 59 * c[:, 1] + 11 * c[:, 2]) // 100  # (B, H, W)


def _check_gray(g: torch.Tensor, name: str = "gray") -> None:
    if g.ndim != 3:
        raise ValueError(f"expected {name} of shape (B, H, W), got {tuple(g.shape)}")
    if g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
        raise ValueError(f"expected an integer {name} tensor with values 0..255, got {g.dtype}")
    if g.numel() == 0:
        raise ValueError(f"expected a non-empty {name}, got shape {tuple(g.shape)}")
    lo, hi = int(g.min()), int(g.max())
    if lo < 0 or hi > _LEVELS - 1:
        raise ValueError(f"expected {name} values in 0..255, got {lo}..{hi}")


def _levels_tensor(levels: Sequence[int] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    lv = torch.as_tensor(levels, device=like.device).reshape(-1)
    if lv.shape[0] != like.shape[0]:
        raise ValueError(
            f"expected one initial gray level per image ({like.shape[0]}), got {lv.shape[0]}"
        )
    return lv.to(torch.float64)


def gray_change(
    gray: torch.Tensor, levels: Sequence[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each result moved from its initial flat gray level.

    Args:
        gray: gray images (B, H, W), integer 0..255 (from :func:`gray`).
        levels: the initial gray level ``g`` of each image, (B,).

    Returns:
        ``(signed, absolute)``, each (B,) float64 in gray levels: ``mean(Gray) - g`` and
        ``mean(|Gray - g|)`` (the paper's Figure 2).
    """
    _check_gray(gray)
    g = _levels_tensor(levels, gray).reshape(-1, 1, 1)
    d = gray.to(torch.float64) - g  # (B, H, W)
    return d.mean(dim=(1, 2)), d.abs().mean(dim=(1, 2))


def neighbor_mean(gray: torch.Tensor) -> torch.Tensor:
    """Floor of the mean gray of each pixel's 3×3 neighborhood, replicate padding at the edges.

    Computed exactly in integers: the sum of the 9 values ``// 9``.

    Args:
        gray: gray images (B, H, W), integer.

    Returns:
        (B, H, W) int64.
    """
    if gray.ndim != 3:
        raise ValueError(f"expected gray of shape (B, H, W), got {tuple(gray.shape)}")
    g = gray.to(torch.int64)
    _, h, w = g.shape
    rows = torch.arange(-1, h + 1, device=g.device).clamp(0, h - 1)
    cols = torch.arange(-1, w + 1, device=g.device).clamp(0, w - 1)
    p = g[:, rows][:, :, cols]  # (B, H + 2, W + 2), replicate padded
    s = torch.zeros_like(g)
    for dy in range(3):
        for dx in range(3):
            s += p[:, dy : dy + h, dx : dx + w]
    return s // 9


def _pair_codes(gray: torch.Tensor) -> torch.Tensor:
    """Code each pixel's pair as ``i * 256 + j`` (B, H, W) int64."""
    return gray.to(torch.int64) * _LEVELS + neighbor_mean(gray)


ROW_CHUNK_VALUES = 2**22
"""Values sorted at once by ``_row_entropy`` (about 25 bytes each in its buffers: ~100 MB)."""


def _row_entropy(codes: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of the values in each row of ``codes`` (R, n) -> (R,) float64.

    The rows are sorted; every run of equal values is one distinct value whose count is the run
    length. With run ends at flat positions ``q`` (the last element of every row is one), the run
    lengths are ``diff(q)``; each run adds ``p log2(1/p)`` with ``p = count / n`` to its row.
    The terms are scattered to dense rows and summed in a fixed order, so results are
    deterministic on every device, and a row of one value gives exactly 0.
    """
    r, n = codes.shape
    rows = max(1, ROW_CHUNK_VALUES // max(1, n))
    if r > rows:  # rows are independent: chunks bound the memory, not the results
        return torch.cat([_row_entropy(c) for c in torch.split(codes, rows)])
    # Pair codes are < 2**16: sorting them as int32 halves the largest buffer.
    s = torch.sort(codes.to(torch.int32), dim=1).values  # (R, n)
    end = torch.ones_like(s, dtype=torch.bool)
    torch.ne(s[:, 1:], s[:, :-1], out=end[:, :-1])
    del s
    q = torch.nonzero(end.reshape(-1)).reshape(-1)  # (runs,) flat positions of run ends
    del end
    p = torch.diff(q, prepend=q.new_full((1,), -1)).to(torch.float64).div_(n)  # (runs,)
    terms = torch.zeros(r * n, dtype=torch.float64, device=codes.device)
    terms[q] = p.log2().mul_(p).neg_()
    del p, q
    return terms.reshape(r, n).sum(dim=1)


def entropy2d(gray: torch.Tensor) -> torch.Tensor:
    """2D entropy of whole images (paper equations 1-2).

    ``H = -sum p_ij log2 p_ij`` over the pairs present, ``p_ij = f(i, j) / N`` with ``i`` the
    gray of a pixel, ``j`` the floor of its 3×3 neighborhood mean and ``N`` the pixel count.

    Args:
        gray: gray images (B, H, W), integer 0..255.

    Returns:
        (B,) float64 in bits, 0..16; a flat image gives exactly 0.
    """
    _check_gray(gray)
    b = gray.shape[0]
    return _row_entropy(_pair_codes(gray).reshape(b, -1))


def _check_window(h: int, w: int, window: int, stride: int, what: str) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"expected {what} window to be a positive integer, got {window!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"expected {what} stride to be a positive integer, got {stride!r}")
    if window > h or window > w:
        raise ValueError(
            f"expected {what} window ({window}) no larger than the image ({h}×{w}), "
            f"got window {window} > {min(h, w)}"
        )


def entropy_map(gray: torch.Tensor, window: int = 16, stride: int = 4) -> torch.Tensor:
    """Local 2D entropy: the 2D entropy of every ``window × window`` patch (Figure 3, row c).

    ``j`` (the 3×3 neighborhood mean) is taken from the full image, then the image is cut into
    windows with the given stride. The windows of one image are sorted together (in chunks of
    ``ROW_CHUNK_VALUES``), so the memory is bounded whatever the batch.

    Args:
        gray: gray images (B, H, W), integer 0..255.
        window: side of a square window in pixels.
        stride: step between windows in pixels.

    Returns:
        (B, H', W') float64 in bits with ``H' = (H - window) // stride + 1`` (same for W').
    """
    _check_gray(gray)
    b, h, w = gray.shape
    _check_window(h, w, window, stride, "entropy map")
    codes = _pair_codes(gray).to(torch.int32)  # (B, H, W); codes < 2**16
    patches = codes.unfold(1, window, stride).unfold(2, window, stride)  # (B, H', W', k, k)
    hh, ww = patches.shape[1], patches.shape[2]
    # one image at a time: its windows are copied out of the (overlapping) view to be sorted
    per = [_row_entropy(p.reshape(hh * ww, window * window)) for p in patches]
    return torch.stack(per).reshape(b, hh, ww)


def second_order_map(
    map1: torch.Tensor, window: int = 16, window2: int = 8, stride2: int = 2
) -> torch.Tensor:
    """Second-order entropy map: the 2D-entropy map of a quantized 2D-entropy map (row d).

    The first map is quantized to 0..255 with the fixed scale ``255 / log2(window²)`` (the
    largest entropy a ``window × window`` patch can have maps to 255): floor, clamp, int64.
    Then :func:`entropy_map` of that quantized map with ``window2`` and ``stride2``.

    Args:
        map1: first-order map (B, h, w), float, bits (from :func:`entropy_map`).
        window: the window the first map was computed with (sets the scale).
        window2: window of the second map, in cells of the first map.
        stride2: stride of the second map, in cells of the first map.

    Returns:
        (B, h', w') float64 in bits with ``h' = (h - window2) // stride2 + 1``.
    """
    if map1.ndim != 3:
        raise ValueError(f"expected map1 of shape (B, h, w), got {tuple(map1.shape)}")
    if not map1.is_floating_point():
        raise ValueError(f"expected a floating map1 (bits), got {map1.dtype}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"expected the first map's window to be an integer >= 2, got {window!r}")
    scale = (_LEVELS - 1) / math.log2(window * window)
    q = torch.floor(map1.to(torch.float64) * scale + _QUANT_EPS).clamp(0, _LEVELS - 1)
    return entropy_map(q.to(torch.int64), window2, stride2)


def second_order_total(map2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-order total entropy (Figure 4) and its mean per cell.

    Args:
        map2: second-order maps (B, h, w), bits.

    Returns:
        ``(total, mean)``, each (B,) in bits.
    """
    if map2.ndim != 3:
        raise ValueError(f"expected map2 of shape (B, h, w), got {tuple(map2.shape)}")
    return map2.sum(dim=(1, 2)), map2.mean(dim=(1, 2))


@dataclass(frozen=True)
class EntropyReport:
    """Entropy measures of a batch of results started from flat gray levels.

    Attributes:
        levels: initial gray level of each image (B,) int64.
        gray_change: ``mean(Gray) - g`` (B,) float64, gray levels.
        gray_change_abs: ``mean(|Gray - g|)`` (B,) float64, gray levels.
        entropy2d: 2D entropy of each whole image (B,) float64, bits.
        second_order_total: sum of the second-order map (B,) float64, bits.
        second_order_mean: mean of the second-order map (B,) float64, bits.
        gray: BT.601 gray images (B, H, W) int64 (Figure 3 row b).
        map1: 2D-entropy maps (B, H', W') float64, bits (row c).
        map2: second-order entropy maps (B, H'', W'') float64, bits (row d).
    """

    levels: torch.Tensor
    gray_change: torch.Tensor
    gray_change_abs: torch.Tensor
    entropy2d: torch.Tensor
    second_order_total: torch.Tensor
    second_order_mean: torch.Tensor
    gray: torch.Tensor
    map1: torch.Tensor
    map2: torch.Tensor

    def best_gray(self) -> int:
        """The initial gray level with the largest second-order total (first on ties)."""
        return best_gray(self.levels, self.second_order_total)


def measure(
    x: torch.Tensor,
    levels: Sequence[int] | torch.Tensor,
    settings: EntropySettings | None = None,
) -> EntropyReport:
    """All entropy measures of an entropy sweep's results.

    Args:
        x: results (B, 3, H, W), pixel space 0..255 (float or uint8).
        levels: the initial gray level of each result (B,).
        settings: map windows and strides; default ``EntropySettings()`` (16/4 and 8/2).

    Returns:
        An :class:`EntropyReport` with tensors on ``x``'s device.
    """
    cfg = settings if settings is not None else EntropySettings()
    g = gray(x)
    lv = _levels_tensor(levels, g).to(torch.int64)
    signed, absolute = gray_change(g, lv)
    map1 = entropy_map(g, cfg.window, cfg.stride)
    map2 = second_order_map(map1, cfg.window, cfg.window2, cfg.stride2)
    total, mean = second_order_total(map2)
    return EntropyReport(
        levels=lv,
        gray_change=signed,
        gray_change_abs=absolute,
        entropy2d=entropy2d(g),
        second_order_total=total,
        second_order_mean=mean,
        gray=g,
        map1=map1,
        map2=map2,
    )


def best_gray(levels: Sequence[int] | torch.Tensor, totals: Sequence[float] | torch.Tensor) -> int:
    """The level with the largest second-order total; the first one on ties.

    Args:
        levels: initial gray levels (B,).
        totals: second-order total entropy of each level (B,).

    Returns:
        The best initial gray level.
    """
    lv = [int(v) for v in torch.as_tensor(levels).reshape(-1).tolist()]
    tt = [float(v) for v in torch.as_tensor(totals).reshape(-1).tolist()]
    if len(lv) != len(tt) or not lv:
        raise ValueError(
            f"expected as many totals as levels (at least one), got {len(tt)} and {len(lv)}"
        )
    best = 0
    for k, t in enumerate(tt):
        if t > tt[best]:
            best = k
    return lv[best]
