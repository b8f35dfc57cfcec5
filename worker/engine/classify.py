"""Model debugging (paper section 3.3): classify photos, screen rectangles with a model's zero.

Pure functions of tensors. A photo of any size is made into a model's input by :func:`fit`, the
way that model's reference evaluation preprocessing does it (``ModelInfo.resize_to`` and
``interpolation``, described in words by ``ModelInfo.resize``). Screening fills rectangles of the
photo with the model's **zero** (the pixel-space color that becomes an all-zero model input), so
each model sees "nothing" there in its own terms, then the screened photo is fitted like any other.
Panels (Figures 6 and 7) are uint8 images ``(3, H, W)`` drawn with :mod:`worker.engine.render`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from worker.engine import render
from worker.engine.models import LoadedModel, ModelInfo, pad_to_bucket

Rect = tuple[int, int, int, int]
"""``(x, y, width, height)`` in pixels: columns ``x .. x+width-1``, rows ``y .. y+height-1``."""

__all__ = [
    "Prediction",
    "Rect",
    "classify",
    "classify_panel",
    "fill_rectangles",
    "fit",
    "fit_geometry",
    "fit_size",
    "predict",
    "screen_panel",
    "topk",
]


@dataclass(frozen=True)
class Prediction:
    """One class of a top-k list: ``p`` is the softmax probability (0..1)."""

    index: int
    label: str
    p: float

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "p": self.p}


# --------------------------------------------------------------------------- resizing


def fit_size(height: int, width: int, info: ModelInfo) -> tuple[int, int]:
    """The ``(height, width)`` an image is resized to before the center crop.

    With ``info.resize_to`` = R the shorter side becomes R and the longer ``int(R · long / short)``
    (torchvision's ``Resize(R)``); without, the image becomes ``input_size × input_size``.
    """
    n = info.input_size
    if info.resize_to is None:
        return n, n
    r = info.resize_to
    if height <= width:
        return r, max(r, int(r * width / height))
    return max(r, int(r * height / width)), r


def fit_geometry(height: int, width: int, info: ModelInfo) -> dict[str, int]:
    """Where a ``height × width`` image goes in :func:`fit`, JSON-ready: the resized size and
    the crop (``top``, ``left`` in resized pixels, ``size`` = the input side)."""
    rh, rw = fit_size(height, width, info)
    n = info.input_size
    return {
        "resized_height": rh,
        "resized_width": rw,
        "crop_top": round((rh - n) / 2.0),
        "crop_left": round((rw - n) / 2.0),
        "crop_size": n,
    }


def fit(x: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """Make images of any size into ``info``'s input, as the model's reference preprocessing does.

    torchvision's ``resize`` (``info.interpolation``, antialiased) to :func:`fit_size` -- the
    shorter side to ``resize_to``, or the whole image to ``input_size`` squared -- then its
    ``center_crop`` of the ``input_size`` square (offsets ``round((H - N) / 2)``). Bicubic
    overshoot is clipped to 0..255.

    Args:
        x: (C, H, W) or (B, C, H, W) float, pixel space 0..255 (any C: masks work too).
        info: the model's entry.

    Returns:
        (C, N, N) or (B, C, N, N) float with N = ``info.input_size``, on ``x``'s device.
    """
    if x.ndim not in (3, 4) or not x.is_floating_point():
        raise ValueError(
            f"expected float images (C, H, W) or (B, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    modes = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
    if info.interpolation not in modes:
        raise ValueError(f"expected bilinear or bicubic interpolation, got {info.interpolation!r}")
    n = info.input_size
    size = [n, n] if info.resize_to is None else [info.resize_to]  # one value: the shorter side
    out = TF.resize(x, size, interpolation=modes[info.interpolation], antialias=True)
    if info.interpolation == "bicubic":
        out = out.clamp(0.0, 255.0)
    cropped: torch.Tensor = TF.center_crop(out, [n, n])
    return cropped.contiguous()


# --------------------------------------------------------------------------- screening


def check_rect(rect: Rect, height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``rect`` lies wholly inside a ``height × width`` image."""
    x, y, w, h = rect
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"expected a rectangle inside the {width}×{height} image with width, height >= 1, "
            f"got x={x}, y={y}, width={w}, height={h}"
        )


def fill_rectangles(x: torch.Tensor, rects: Sequence[Rect], color: Sequence[float]) -> torch.Tensor:
    """A copy of ``x`` with every rectangle filled with ``color`` (e.g. a model's zero).

    Args:
        x: (3, H, W) float, pixel space 0..255.
        rects: ``(x, y, width, height)`` in pixels, each wholly inside the image.
        color: 3 pixel-space values (R, G, B).

    Returns:
        (3, H, W) float, a new tensor.
    """
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(x.shape)}")
    if len(color) != 3:
        raise ValueError(f"expected 3 color values, got {len(color)}")
    out = x.clone()
    fill = torch.tensor([float(c) for c in color], dtype=x.dtype, device=x.device).view(3, 1, 1)
    for r in rects:
        check_rect(r, int(x.shape[1]), int(x.shape[2]))
        rx, ry, rw, rh = r
        out[:, ry : ry + rh, rx : rx + rw] = fill
    return out


def screen_mask(height: int, width: int, rects: Sequence[Rect]) -> torch.Tensor:
    """(1, H, W) float mask: 1 inside any rectangle, 0 elsewhere."""
    m = torch.zeros(1, height, width)
    for r in rects:
        check_rect(r, height, width)
        rx, ry, rw, rh = r
        m[:, ry : ry + rh, rx : rx + rw] = 1.0
    return m


# --------------------------------------------------------------------------- predictions


@torch.no_grad()
def predict(
    model: LoadedModel, x: torch.Tensor, chunk: int = 32, *, buckets: bool | None = None
) -> torch.Tensor:
    """Softmax probabilities (B, K) of model-input-sized images (B, 3, N, N), pixel space.

    ``buckets`` (default: on a GPU): each pass padded with black images to its ``bucket`` size,
    so that a GPU meets few batch sizes (each new one costs cuDNN seconds)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    pad_on = model.device.type == "cuda" if buckets is None else buckets
    outs = []
    for i in range(0, x.shape[0], chunk):
        xs = x[i : i + chunk].to(model.device)
        n = xs.shape[0]
        outs.append(model(pad_to_bucket(xs) if pad_on else xs)[:n].float().softmax(dim=1).cpu())
    return torch.cat(outs)


def topk(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row of ``probs`` (B, K), most probable first."""
    vals, idx = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(vr, ir, strict=True)]
        for vr, ir in zip(vals, idx, strict=True)
    ]


def classify(
    model: LoadedModel, images: Sequence[torch.Tensor], k: int = 5
) -> tuple[list[list[Prediction]], torch.Tensor]:
    """Top-k of photos of any size under ``model``, each fitted as the model expects (:func:`fit`).

    Args:
        images: each (3, H, W) float, pixel space 0..255; sizes may differ.
        k: predictions per image.

    Returns:
        The top-k per image and the probabilities (B, K).
    """
    if not images:
        raise ValueError("expected at least one image, got 0")
    batch = torch.stack([fit(im.to(model.device).float(), model.info) for im in images])
    probs = predict(model, batch)
    return topk(probs, model.info.labels, k), probs


# --------------------------------------------------------------------------- panels


def _percent(p: float) -> str:
    if p >= 0.9995:
        return "100%"
    if p >= 0.001:
        return f"{100 * p:.1f}%"
    return "<0.1%"


def prediction_lines(preds: Sequence[Prediction]) -> list[str]:
    """``"tiger cat 38.7%"`` per prediction."""
    return [f"{p.label} {_percent(p.p)}" for p in preds]


def _text_block(
    sections: Sequence[tuple[str, Sequence[str]]], width: int, font_size: int, pad: int = 4
) -> torch.Tensor:
    """Text on white, ``width`` wide: each section a bold-ish title and its lines, left-aligned,
    each line cut with "…" to fit. -> (3, H, width) uint8."""
    font = render._font(font_size)
    lh = render._line_height(font)
    n_lines = sum(1 + len(lines) for _, lines in sections)
    height = pad + n_lines * lh + max(0, len(sections) - 1) * (lh // 2) + pad
    canvas = Image.new("RGB", (width, height), render.WHITE)
    draw = ImageDraw.Draw(canvas)
    y = float(pad)
    inner = max(1, width - 2 * pad)
    for s, (title, lines) in enumerate(sections):
        if s:
            y += lh // 2
        for k, text in enumerate([title, *lines]):
            cut = render._wrap(font, text, inner, max_lines=1)
            line = cut[0] if cut else ""
            x = pad if k == 0 else pad + font_size // 2
            render._draw_text(draw, (x, y), line, font, render.BLACK)
            if k == 0:  # a second pass one pixel right reads as bold
                render._draw_text(draw, (x + 1, y), line, font, render.BLACK)
            y += lh
    return render._from_pil(canvas)


def _cell(image: torch.Tensor, side: int) -> torch.Tensor:
    return render._from_pil(render._fit_cell(render._as_u8(image), side))


def _titled(title: str, width: int, font_size: int, pad: int = 4) -> torch.Tensor:
    font = render._font(font_size)
    lh = render._line_height(font)
    canvas = Image.new("RGB", (width, lh + pad), render.WHITE)
    lines = render._wrap(font, title, width, max_lines=1)
    render._draw_lines_centered(ImageDraw.Draw(canvas), font, lines, width / 2, pad, render.BLACK)
    return render._from_pil(canvas)


def classify_panel(
    images: Sequence[torch.Tensor],
    titles: Sequence[str],
    predictions: Mapping[str, Sequence[Sequence[Prediction]]],
    *,
    cell: int = 224,
    pad: int = 8,
    font_size: int = 13,
) -> torch.Tensor:
    """Figure 6: each image in a column, with every model's top predictions under it.

    Args:
        images: each (3, H, W) pixel space or uint8; shown whole, aspect kept, in a square cell.
        titles: one title per image (e.g. the file name), over it.
        predictions: model name -> per image, its top-k.
        cell: side of an image cell in pixels; a column is ``cell`` wide.
        pad: white margin between columns and around the panel.
        font_size: text size in pixels.

    Returns:
        (3, H, W) uint8 with ``W = len(images) · cell + (len(images) + 1) · pad``.
    """
    if not images or len(titles) != len(images):
        raise ValueError(f"expected one title per image, got {len(titles)} for {len(images)}")
    for name, per_image in predictions.items():
        if len(per_image) != len(images):
            raise ValueError(f"expected {len(images)} top-k lists for {name}, got {len(per_image)}")
    columns = []
    for i, im in enumerate(images):
        text = _text_block(
            [(name, prediction_lines(per[i])) for name, per in predictions.items()],
            cell,
            font_size,
        )
        columns.append(
            render.vcat([_titled(titles[i], cell, font_size), _cell(im, cell), text], pad=2)
        )
    body = render.hcat(columns, pad=pad)
    return _margin(body, pad)


def _margin(u8: torch.Tensor, pad: int) -> torch.Tensor:
    _, h, w = u8.shape
    out = torch.full((3, h + 2 * pad, w + 2 * pad), 255, dtype=torch.uint8)
    out[:, pad : pad + h, pad : pad + w] = u8
    return out


def screen_panel(
    rows: Sequence[
        tuple[str, torch.Tensor, torch.Tensor, Sequence[Prediction], Sequence[Prediction]]
    ],
    *,
    cell: int = 224,
    pad: int = 8,
    font_size: int = 13,
) -> torch.Tensor:
    """Figure 7: one row per model: the model's input before and after screening, each with its
    top predictions under it.

    Args:
        rows: ``(model name, input before (3, N, N), input after (3, N, N), top-k before,
            top-k after)``; inputs in pixel space (as the model saw them).
        cell: side of an image cell in pixels.
        pad: white margin.
        font_size: text size in pixels.

    Returns:
        (3, H, W) uint8 with ``W = 2 · cell + 3 · pad``.
    """
    if not rows:
        raise ValueError("expected at least one model row, got 0")
    parts = []
    for name, before, after, top_before, top_after in rows:
        cols = []
        for what, im, preds in (("original", before, top_before), ("screened", after, top_after)):
            text = _text_block([(f"{name}, {what}", prediction_lines(preds))], cell, font_size)
            cols.append(render.vcat([_cell(im, cell), text], pad=2))
        parts.append(render.hcat(cols, pad=pad))
    return _margin(render.vcat(parts, pad=pad), pad)
