"""Pictures of results: strips, grids, heat maps with a color bar, and line plots.

Pure functions: images go in as tensors and come out as uint8 tensors ``(3, H, W)`` or PNG
bytes; nothing is written to disk. Layouts (strips, grids, captions) are drawn with Pillow and its
built-in scalable font (``ImageFont.load_default(size=...)``, Pillow >= 10.1); the viridis
colormap, color bars and line plots come from matplotlib (Agg canvas, matplotlib's own defaults
whatever a ``matplotlibrc`` says, PNG written without a ``Software`` tag), so the same input
gives the same bytes. Canvases are white; text is black.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache

import matplotlib
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from worker.engine import images as img

__all__ = [
    "VIRIDIS",
    "colorbar",
    "colorize",
    "gray_images",
    "grid",
    "hcat",
    "heatmap",
    "line_plot",
    "strip",
    "vcat",
]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
MARK_RED = "#c81e1e"
MARKERS = ("o", "s", "^", "D")
"""Marker shapes of the series of a line plot, in turn (colors: matplotlib's default cycle)."""

VIRIDIS: tuple[RGB, ...] = tuple(
    (int(r), int(g), int(b)) for r, g, b, _ in colormaps["viridis"](np.arange(256), bytes=True)
)
"""matplotlib's viridis: its 256 colors, dark purple (low) to yellow (high)."""


# --------------------------------------------------------------------------- helpers


@lru_cache(maxsize=64)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _line_height(font: Font) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return int(ascent + descent)
    return int(font.getbbox("Ag")[3]) + 2


# Stand-ins for characters the built-in font may lack (it has no minus sign or en dash).
_SUBSTITUTES = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u00d7": "x",  # multiplication sign
    "\u00b2": "2",  # superscript two
    "\u00b5": "u",  # micro sign
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2022": "\u00b7",  # bullet -> middle dot
}


@lru_cache(maxsize=1)
def _notdef_mask() -> bytes:
    font = _font(20)
    return bytes(font.getmask("\U0010fffd"))


@lru_cache(maxsize=1024)
def _has_glyph(ch: str) -> bool:
    """Whether the built-in font draws ``ch`` as something other than its "missing" box."""
    return ch.isspace() or bytes(_font(20).getmask(ch)) != _notdef_mask()


def _printable(text: str) -> str:
    """``text`` with characters the font lacks replaced by ASCII stand-ins where known."""
    return "".join(
        _SUBSTITUTES[ch] if ch in _SUBSTITUTES and not _has_glyph(ch) else ch for ch in text
    )


def _text_width(font: Font, text: str) -> int:
    return math.ceil(font.getlength(_printable(text)))


def _draw_text(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Font, fill: RGB
) -> None:
    draw.text((round(xy[0]), round(xy[1])), _printable(text), font=font, fill=fill)


def _wrap(font: Font, text: str, max_width: int, max_lines: int = 2) -> list[str]:
    """Word-wrap ``text`` to ``max_width`` pixels; the last line ends in "…" if cut."""
    words = text.split()
    if not words:
        return []
    lines: list[str] = []
    cur = ""
    for word in words:
        cand = f"{cur} {word}" if cur else word
        if _text_width(font, cand) <= max_width or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    lines.append(cur)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]
    last = lines[-1]
    if _text_width(font, last) > max_width or len(" ".join(lines).split()) < len(words):
        while last and _text_width(font, last + "…") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return [ln for ln in lines if ln]


def _draw_lines_centered(
    draw: ImageDraw.ImageDraw, font: Font, lines: list[str], cx: float, top: float, fill: RGB
) -> None:
    lh = _line_height(font)
    for k, line in enumerate(lines):
        w = _text_width(font, line)
        _draw_text(draw, (cx - w / 2, top + k * lh), line, font, fill)


def _to_pil(u8: torch.Tensor) -> Image.Image:
    """(3, H, W) uint8 -> RGB PIL image."""
    arr = u8.detach().to("cpu", torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(arr, mode="RGB")


def _from_pil(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor on the CPU."""
    rgb = im.convert("RGB")
    t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return t.reshape(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()


def _as_u8(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space float or uint8 image(s) -> uint8 on the CPU."""
    u8 = x if x.dtype == torch.uint8 else img.to_uint8(x.detach())
    return u8.to("cpu")


def _auto_font_size(side: int) -> int:
    return max(10, min(24, side // 12))


# --------------------------------------------------------------------------- layouts


def strip(
    images: torch.Tensor,
    labels: Sequence[str] | None = None,
    pad: int = 4,
    *,
    font_size: int | None = None,
) -> torch.Tensor:
    """Images side by side, each with an optional caption under it (Figure 3, rows a-d).

    Args:
        images: (B, 3, H, W) pixel space 0..255 (float) or uint8.
        labels: one caption per image (wrapped to two lines, cut with "…"), or None.
        pad: white margin in pixels around and between images.
        font_size: caption size in pixels; default from the image height.

    Returns:
        (3, H', W') uint8 with ``W' = B * W + (B + 1) * pad``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    if b == 0:
        raise ValueError("expected at least one image, got B = 0")
    if labels is not None and len(labels) != b:
        raise ValueError(f"expected {b} labels (one per image), got {len(labels)}")
    if pad < 0:
        raise ValueError(f"expected pad >= 0, got {pad}")
    u8 = _as_u8(images)
    font = _font(font_size or _auto_font_size(h))
    wrapped = [_wrap(font, lab, w) for lab in labels] if labels is not None else []
    n_lines = max((len(ls) for ls in wrapped), default=0)
    cap_h = n_lines * _line_height(font) + pad if n_lines else 0
    canvas = Image.new("RGB", (b * w + (b + 1) * pad, h + 2 * pad + cap_h), WHITE)
    draw = ImageDraw.Draw(canvas)
    for k in range(b):
        x0 = pad + k * (w + pad)
        canvas.paste(_to_pil(u8[k]), (x0, pad))
        if wrapped:
            _draw_lines_centered(draw, font, wrapped[k], x0 + w / 2, h + 2 * pad, BLACK)
    return _from_pil(canvas)


def _fit_cell(u8: torch.Tensor, cell: int) -> Image.Image:
    """One image resized (aspect kept, bilinear) and centered on a white ``cell × cell`` box."""
    pil = _to_pil(u8)
    w, h = pil.size
    s = cell / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    if (nw, nh) != (w, h):
        pil = pil.resize((nw, nh), Image.Resampling.BILINEAR)
    box = Image.new("RGB", (cell, cell), WHITE)
    box.paste(pil, ((cell - nw) // 2, (cell - nh) // 2))
    return box


def grid(
    images: Sequence[Sequence[torch.Tensor]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    cell: int | None = None,
    pad: int = 4,
    font_size: int | None = None,
) -> torch.Tensor:
    """Rows × columns of images with labels on the left and on top (Figure 5: models × targets).

    Images may differ in size (e.g. 224 and 299 inputs): each is resized, aspect kept, to a
    common square cell.

    Args:
        images: ``images[r][c]`` is one image (3, H, W), pixel space 0..255 or uint8.
        row_labels: one label per row (e.g. model names).
        col_labels: one label per column (e.g. class names).
        cell: side of a cell in pixels; default the largest side among the images.
        pad: white margin in pixels.
        font_size: label size in pixels; default from the cell size.

    Returns:
        (3, H, W) uint8.
    """
    rows = len(images)
    if rows == 0 or rows != len(row_labels):
        raise ValueError(f"expected one row label per row ({rows} rows), got {len(row_labels)}")
    cols = len(col_labels)
    for r, row in enumerate(images):
        if len(row) != cols:
            raise ValueError(f"expected {cols} images in row {r} (one per column), got {len(row)}")
        for c, im in enumerate(row):
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(
                    f"expected image [{r}][{c}] of shape (3, H, W), got {tuple(im.shape)}"
                )
    if cols == 0:
        raise ValueError("expected at least one column, got 0")
    side = cell or max(max(int(im.shape[1]), int(im.shape[2])) for row in images for im in row)
    if side < 1:
        raise ValueError(f"expected cell >= 1, got {side}")
    font = _font(font_size or _auto_font_size(side))
    lh = _line_height(font)
    col_wrapped = [_wrap(font, lab, side, max_lines=2) for lab in col_labels]
    head_h = max(len(ls) for ls in col_wrapped) * lh + pad
    label_max_w = max(side, 4 * lh)
    row_wrapped = [_wrap(font, lab, label_max_w, max_lines=3) for lab in row_labels]
    label_w = max((_text_width(font, ln) for ls in row_wrapped for ln in ls), default=0) + 3 * pad
    width = pad + label_w + cols * (side + pad)
    height = pad + head_h + rows * (side + pad)
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)
    x_first = pad + label_w
    y_first = pad + head_h
    for c, lines in enumerate(col_wrapped):
        cx = x_first + c * (side + pad) + side / 2
        head_top = pad + (head_h - pad - len(lines) * lh)  # bottom-aligned over the cells
        _draw_lines_centered(draw, font, lines, cx, head_top, BLACK)
    for r, row in enumerate(images):
        y0 = y_first + r * (side + pad)
        lines = row_wrapped[r]
        label_top = y0 + (side - len(lines) * lh) / 2
        for k, line in enumerate(lines):
            _draw_text(draw, (pad, label_top + k * lh), line, font, BLACK)
        for c, im in enumerate(row):
            canvas.paste(_fit_cell(_as_u8(im), side), (x_first + c * (side + pad), y0))
    return _from_pil(canvas)


def hcat(panels: Sequence[torch.Tensor], pad: int = 4) -> torch.Tensor:
    """Put uint8 images (3, H_k, W_k) side by side, top-aligned, on white. -> (3, H, W) uint8."""
    if not panels:
        raise ValueError("expected at least one panel, got 0")
    u8 = [_as_u8(p) for p in panels]
    h = max(int(p.shape[1]) for p in u8)
    w = sum(int(p.shape[2]) for p in u8) + pad * (len(u8) - 1)
    out = torch.full((3, h, w), 255, dtype=torch.uint8)
    x = 0
    for p in u8:
        out[:, : p.shape[1], x : x + p.shape[2]] = p
        x += int(p.shape[2]) + pad
    return out


def vcat(panels: Sequence[torch.Tensor], pad: int = 4) -> torch.Tensor:
    """Stack uint8 images (3, H_k, W_k) top to bottom, left-aligned, on white. -> (3, H, W)."""
    if not panels:
        raise ValueError("expected at least one panel, got 0")
    u8 = [_as_u8(p) for p in panels]
    w = max(int(p.shape[2]) for p in u8)
    h = sum(int(p.shape[1]) for p in u8) + pad * (len(u8) - 1)
    out = torch.full((3, h, w), 255, dtype=torch.uint8)
    y = 0
    for p in u8:
        out[:, y : y + p.shape[1], : p.shape[2]] = p
        y += int(p.shape[1]) + pad
    return out


def gray_images(gray: torch.Tensor) -> torch.Tensor:
    """Gray images as RGB for display (Figure 3, row b).

    Args:
        gray: (B, H, W) gray levels 0..255 (integer or float).

    Returns:
        (B, 3, H, W) float32 pixel space 0..255, on ``gray``'s device.
    """
    if gray.ndim != 3:
        raise ValueError(f"expected gray of shape (B, H, W), got {tuple(gray.shape)}")
    return gray.to(torch.float32).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------- heat maps


def colorize(t: torch.Tensor) -> torch.Tensor:
    """Viridis colors of values in 0..1, as matplotlib's colormap gives them (clamped; NaN -> 0).

    Value ``v`` takes color ``floor(256 · v)`` of :data:`VIRIDIS` (1.0 the last).

    Args:
        t: any shape ``(...)``.

    Returns:
        ``(..., 3)`` uint8 on ``t``'s device.
    """
    lut = torch.tensor(VIRIDIS, dtype=torch.uint8, device=t.device)  # (256, 3)
    v = torch.nan_to_num(t.to(torch.float64), nan=0.0, posinf=1.0, neginf=0.0)
    idx = (v * len(VIRIDIS)).floor().clamp(0, len(VIRIDIS) - 1).to(torch.int64)
    return lut[idx]


def heatmap(
    maps: torch.Tensor, vmin: float, vmax: float, size: int | tuple[int, int] = 224
) -> torch.Tensor:
    """Maps as viridis heat-map images, upscaled by nearest neighbour so cells stay visible.

    Args:
        maps: (B, h, w) values (e.g. entropy in bits).
        vmin: value shown as the darkest color (dark purple).
        vmax: value shown as the lightest color (yellow); values outside are clamped.
        size: output side ``S`` in pixels, or ``(height, width)``.

    Returns:
        (B, 3, S, S) uint8 on ``maps``' device.
    """
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (B, h, w), got {tuple(maps.shape)}")
    if not math.isfinite(vmin) or not math.isfinite(vmax) or vmax <= vmin:
        raise ValueError(f"expected finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    oh, ow = (size, size) if isinstance(size, int) else size
    if oh < 1 or ow < 1:
        raise ValueError(f"expected a positive size, got {size}")
    _, h, w = maps.shape
    if h == 0 or w == 0:
        raise ValueError(f"expected non-empty maps, got {tuple(maps.shape)}")
    ys = torch.arange(oh, device=maps.device) * h // oh
    xs = torch.arange(ow, device=maps.device) * w // ow
    big = maps[:, ys][:, :, xs]  # (B, S, S)
    rgb = colorize((big.to(torch.float64) - vmin) / (vmax - vmin))  # (B, S, S, 3)
    return rgb.permute(0, 3, 1, 2).contiguous()


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's own defaults (no ``matplotlibrc`` of the machine), for this block only."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        yield


def _rgb(canvas: FigureCanvasAgg) -> np.ndarray:
    """The drawn canvas as an (H, W, 3) uint8 array."""
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    return np.asarray(rgba)[:, :, :3].copy()


def colorbar(
    vmin: float,
    vmax: float,
    label: str,
    height: int,
    *,
    bar_width: int = 16,
    font_size: int | None = None,
) -> torch.Tensor:
    """A vertical viridis color bar (matplotlib's) with tick values and a label (e.g. "bits").

    Args:
        vmin: value at the bottom of the bar.
        vmax: value at the top of the bar.
        label: axis label with units, written bottom to top on the right.
        height: image height in pixels (match the heat maps it goes with).
        bar_width: width of the colored bar in pixels.
        font_size: text size in pixels; default from the height.

    Returns:
        (3, height, W) uint8, W just wide enough for the ticks and the label.
    """
    if not math.isfinite(vmin) or not math.isfinite(vmax) or vmax <= vmin:
        raise ValueError(f"expected finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    fs = font_size or max(8, min(14, height // 16))
    if height < 4 * fs:
        raise ValueError(f"expected height >= {4 * fs} pixels to fit the ticks, got {height}")
    if bar_width < 1:
        raise ValueError(f"expected bar_width >= 1, got {bar_width}")
    room = bar_width + 20 * fs  # wider than ever needed; cropped to what was drawn
    margin = fs  # half a tick label above the top and under the bottom, and some air
    with _style():
        fig = Figure(figsize=(room / 72, height / 72), dpi=72, facecolor="white")
        canvas = FigureCanvasAgg(fig)
        cax = fig.add_axes((2 / room, margin / height, bar_width / room, 1 - 2 * margin / height))
        bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), colormaps["viridis"]), cax=cax)
        bar.set_label(label, fontsize=fs)
        cax.tick_params(labelsize=fs, length=3, width=0.8)
        bar.outline.set_linewidth(0.8)
        pixels = _rgb(canvas)
        renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
        right = fig.get_tightbbox(renderer).x1 * 72
    width = min(room, math.ceil(right) + 3)
    return torch.from_numpy(np.ascontiguousarray(pixels[:, :width].transpose(2, 0, 1)))


# --------------------------------------------------------------------------- line plots


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    mark_x: float | None = None,
    mark_label: str | None = None,
    size: tuple[int, int] = (800, 500),
) -> bytes:
    """A line plot as PNG bytes (Figures 2 and 4), drawn by matplotlib: axes with its ticks,
    labels with units, a marker shape per series, a legend under the plot when there is more
    than one line.

    Non-finite values are left out (the line breaks there).

    Args:
        x: x values, shared by all series.
        series: name -> y values (same length as ``x``).
        title: plot title.
        x_label: x-axis label with units, e.g. "initial gray level g (0–255)".
        y_label: y-axis label with units, e.g. "second-order total entropy (bits)".
        mark_x: draw a dashed red vertical line at this x (e.g. the best initial gray), named in
            the legend.
        mark_label: its legend entry; default ``"x = <mark_x>"``.
        size: ``(width, height)`` of the PNG in pixels.

    Returns:
        PNG bytes, exactly ``size``, the same bytes for the same input.
    """
    width, height = size
    if width < 200 or height < 150:
        raise ValueError(f"expected size of at least (200, 150), got {size}")
    if not x:
        raise ValueError("expected at least one x value, got 0")
    if not series:
        raise ValueError("expected at least one series, got 0")
    for name, ys in series.items():
        if len(ys) != len(x):
            raise ValueError(f"expected {len(x)} values in series {name!r}, got {len(ys)}")
    xs = [float(v) for v in x]
    if not all(math.isfinite(v) for v in xs):
        raise ValueError("expected finite x values")
    dpi = 100
    fs = max(7.0, min(14.0, min(width, height) / 50))
    with _style():
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
        fig.set_layout_engine("constrained")
        FigureCanvasAgg(fig)  # the Agg canvas savefig draws on
        ax = fig.add_subplot()
        for k, (name, ys) in enumerate(series.items()):
            yv = [float(v) if math.isfinite(float(v)) else math.nan for v in ys]
            ax.plot(xs, yv, marker=MARKERS[k % len(MARKERS)], markersize=4, lw=1.5, label=name)
        if mark_x is not None and math.isfinite(mark_x):
            text = mark_label if mark_label is not None else f"x = {mark_x:g}"
            ax.axvline(mark_x, color=MARK_RED, ls="--", lw=1.5, label=text)
        ax.set_title(title, fontsize=fs + 2)
        ax.set_xlabel(x_label, fontsize=fs)
        ax.set_ylabel(y_label, fontsize=fs)
        ax.tick_params(labelsize=fs)
        ax.grid(True, color="0.88", lw=0.8)
        ax.set_axisbelow(True)
        handles, _ = ax.get_legend_handles_labels()
        if len(handles) > 1:  # under the x label, never over the data
            ncols = min(len(handles), 4)
            fig.legend(fontsize=fs, loc="outside lower center", ncols=ncols, frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white", metadata={"Software": None})
    return buf.getvalue()
