"""Pictures of results: strips, grids, heat maps with a color bar, and line plots.

Pure functions: images go in as tensors and come out as uint8 tensors ``(3, H, W)`` or PNG
bytes; nothing is written to disk. Drawing uses Pillow with its built-in scalable font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1), so the same input gives the same bytes.
Canvases are white; text is black.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import torch
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
    "nice_step",
    "nice_ticks",
    "strip",
    "vcat",
]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
GRID_GRAY: RGB = (225, 225, 225)
MARK_RED: RGB = (200, 30, 30)

# Viridis sampled at 8 evenly spaced points (0, 1/7, ..., 1); linear between them.
VIRIDIS: tuple[RGB, ...] = (
    (68, 1, 84),
    (70, 50, 126),
    (54, 92, 141),
    (39, 127, 142),
    (31, 161, 135),
    (74, 193, 109),
    (160, 218, 57),
    (253, 231, 37),
)

# Series colors (Tableau 10 order) and marker shapes, cycled together.
PALETTE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
MARKERS = ("circle", "square", "triangle", "diamond")


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


def _rotated_text(font: Font, text: str, fill: RGB = BLACK) -> Image.Image:
    """``text`` rendered on white and turned 90° counter-clockwise (reads bottom to top)."""
    w, h = _text_width(font, text) + 2, _line_height(font)
    im = Image.new("RGB", (max(w, 1), h), WHITE)
    _draw_text(ImageDraw.Draw(im), (1, 0), text, font, fill)
    return im.transpose(Image.Transpose.ROTATE_90)


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
    """Viridis colors of values in 0..1 (clamped; NaN -> 0).

    Args:
        t: any shape ``(...)``.

    Returns:
        ``(..., 3)`` uint8 on ``t``'s device.
    """
    lut = torch.tensor(VIRIDIS, dtype=torch.float64, device=t.device)  # (8, 3)
    pos = torch.nan_to_num(t.to(torch.float64), nan=0.0).clamp(0.0, 1.0) * (len(VIRIDIS) - 1)
    lo = pos.floor().clamp(max=len(VIRIDIS) - 2).to(torch.int64)
    frac = (pos - lo).unsqueeze(-1)
    rgb = lut[lo] * (1.0 - frac) + lut[lo + 1] * frac
    return torch.round(rgb).clamp(0, 255).to(torch.uint8)


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


def nice_step(span: float, target: int = 6) -> float:
    """A tick step of 1, 2 or 5 × 10^k giving about ``target`` intervals over ``span``."""
    if not math.isfinite(span) or span <= 0:
        return 1.0
    raw = span / max(1, target)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 5.0, 10.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Multiples of :func:`nice_step` within ``[lo, hi]`` (ends included up to rounding)."""
    step = nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [_clean(k * step) for k in range(first, last + 1)]


def _clean(v: float) -> float:
    r = round(v, 12)
    return 0.0 if r == 0 else r


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0


def _fmt(v: float, decimals: int) -> str:
    s = f"{v:.{decimals}f}"
    return "0" if float(s) == 0 else s.replace("-", "−")


def colorbar(
    vmin: float,
    vmax: float,
    label: str,
    height: int,
    *,
    bar_width: int = 16,
    font_size: int | None = None,
) -> torch.Tensor:
    """A vertical viridis color bar with tick values and a rotated label (e.g. "bits").

    Args:
        vmin: value at the bottom of the bar.
        vmax: value at the top of the bar.
        label: axis label with units, written bottom to top on the right.
        height: image height in pixels (match the heat maps it goes with).
        bar_width: width of the colored bar in pixels.
        font_size: text size in pixels; default from the height.

    Returns:
        (3, height, W) uint8.
    """
    if not math.isfinite(vmin) or not math.isfinite(vmax) or vmax <= vmin:
        raise ValueError(f"expected finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    font = _font(font_size or max(10, min(16, height // 14)))
    lh = _line_height(font)
    if height < 2 * lh:
        raise ValueError(f"expected height >= {2 * lh} pixels to fit the ticks, got {height}")
    top, bottom = lh // 2, height - lh // 2 - 1  # room for half a tick label at each end
    span_px = bottom - top
    ticks = nice_ticks(vmin, vmax, target=max(2, min(8, span_px // (2 * lh))))
    dec = _decimals(nice_step(vmax - vmin, max(2, min(8, span_px // (2 * lh)))))
    texts = [_fmt(t, dec) for t in ticks]
    tick_w = max((_text_width(font, s) for s in texts), default=0)
    label_im = _rotated_text(font, label)
    x_bar = 2
    x_text = x_bar + bar_width + 6
    width = x_text + tick_w + 6 + label_im.width + 2
    canvas = Image.new("RGB", (width, height), WHITE)
    # Bar: top row = vmax, bottom row = vmin.
    frac = 1.0 - torch.arange(span_px + 1, dtype=torch.float64) / max(1, span_px)
    col = colorize(frac)  # (span_px + 1, 3)
    bar = col.unsqueeze(1).expand(-1, bar_width, -1).contiguous().numpy()
    canvas.paste(Image.fromarray(bar, mode="RGB"), (x_bar, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x_bar - 1, top - 1, x_bar + bar_width, bottom + 1), outline=BLACK)
    for t, s in zip(ticks, texts, strict=True):
        y = bottom - (t - vmin) / (vmax - vmin) * span_px
        yi = round(y)
        draw.line((x_bar + bar_width, yi, x_bar + bar_width + 3, yi), fill=BLACK)
        _draw_text(draw, (x_text, y - lh / 2), s, font, BLACK)
    canvas.paste(label_im, (width - label_im.width - 2, max(0, (height - label_im.height) // 2)))
    return _from_pil(canvas)


# --------------------------------------------------------------------------- line plots


def _marker(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, c: RGB) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=c)
    elif shape == "square":
        q = r * 0.9
        draw.rectangle((x - q, y - q, x + q, y + q), fill=c)
    elif shape == "triangle":
        q = r * 1.2
        draw.polygon([(x, y - q), (x - q, y + q * 0.8), (x + q, y + q * 0.8)], fill=c)
    else:
        q = r * 1.25
        draw.polygon([(x, y - q), (x + q, y), (x, y + q), (x - q, y)], fill=c)


def _dashed_vline(
    draw: ImageDraw.ImageDraw, x: float, y0: float, y1: float, c: RGB, w: int, dash: int
) -> None:
    y = y0
    while y < y1:
        draw.line((x, y, x, min(y + dash, y1)), fill=c, width=w)
        y += 2 * dash


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
    """A line plot as PNG bytes (Figures 2 and 4): axes, nice ticks, labels, markers, legend.

    Non-finite values are left out (the line breaks there). A legend is drawn (under the title,
    never over the data) when there is more than one series.

    Args:
        x: x values, shared by all series.
        series: name -> y values (same length as ``x``).
        title: plot title.
        x_label: x-axis label with units, e.g. "initial gray level g (0–255)".
        y_label: y-axis label with units, e.g. "second-order total entropy (bits)".
        mark_x: draw a dashed vertical marker at this x (e.g. the best initial gray).
        mark_label: text next to the marker; default ``"x = <mark_x>"``.
        size: ``(width, height)`` of the PNG in pixels.

    Returns:
        PNG bytes, exactly ``size``, deterministic.
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

    ss = 2  # supersampling: draw at 2× and downsample, for smooth lines
    W, H = width * ss, height * ss
    base = max(10, min(28, min(width, height) // 34))
    f_tick, f_label, f_title = _font(base * ss), _font((base + 2) * ss), _font((base + 4) * ss)
    lh_tick, lh_label, lh_title = _line_height(f_tick), _line_height(f_label), _line_height(f_title)
    pad = 8 * ss
    tick_len = 5 * ss

    # Data ranges.
    finite_y = [float(v) for ys in series.values() for v in ys if math.isfinite(float(v))]
    xlo, xhi = min(xs), max(xs)
    if mark_x is not None and math.isfinite(mark_x):
        xlo, xhi = min(xlo, mark_x), max(xhi, mark_x)
    if xhi == xlo:
        xlo, xhi = xlo - 1.0, xhi + 1.0
    ylo, yhi = (min(finite_y), max(finite_y)) if finite_y else (0.0, 1.0)
    if yhi == ylo:
        d = abs(ylo) * 0.1 or 1.0
        ylo, yhi = ylo - d, yhi + d
    ystep = nice_step(yhi - ylo, 5)
    ylo, yhi = math.floor(ylo / ystep + 1e-9) * ystep, math.ceil(yhi / ystep - 1e-9) * ystep
    yticks = nice_ticks(ylo, yhi, 5)
    ydec = _decimals(ystep)
    ytexts = [_fmt(t, ydec) for t in yticks]

    # Legend rows (under the title) when there is more than one series.
    names = list(series)
    swatch = 28 * ss
    legend_rows: list[list[int]] = []
    if len(names) > 1:
        row: list[int] = []
        row_w = 0
        for k, name in enumerate(names):
            item_w = swatch + 6 * ss + _text_width(f_tick, name) + 18 * ss
            if row and row_w + item_w > W - 2 * pad:
                legend_rows.append(row)
                row, row_w = [], 0
            row.append(k)
            row_w += item_w
        legend_rows.append(row)

    # Margins.
    has_mark = mark_x is not None and math.isfinite(mark_x)
    mark_top = pad + lh_title + pad + len(legend_rows) * (lh_tick + 4 * ss)
    top = mark_top + (lh_tick + 2 * ss if has_mark else 0) + pad // 2
    ytick_w = max(_text_width(f_tick, s) for s in ytexts)
    left = pad + lh_label + pad + ytick_w + tick_len + 4 * ss
    bottom = H - (pad + lh_label + pad // 2 + lh_tick + tick_len + 4 * ss)
    xstep = nice_step(xhi - xlo, max(3, min(10, width // 90)))
    xdec = _decimals(xstep)
    xticks = nice_ticks(xlo, xhi, max(3, min(10, width // 90)))
    xtexts = [_fmt(t, xdec) for t in xticks]
    right = W - max(pad * 2, max(_text_width(f_tick, s) for s in xtexts) // 2 + pad)
    # A little air between the data and the frame on the x axis.
    inner = 10 * ss
    px0, px1 = left + inner, right - inner

    def to_px(xv: float) -> float:
        return px0 + (xv - xlo) / (xhi - xlo) * (px1 - px0)

    def to_py(yv: float) -> float:
        return bottom - (yv - ylo) / (yhi - ylo) * (bottom - top)

    canvas = Image.new("RGB", (W, H), WHITE)
    draw = ImageDraw.Draw(canvas)

    # Title.
    title_lines = _wrap(f_title, title, W - 2 * pad, max_lines=1)
    _draw_lines_centered(draw, f_title, title_lines, W / 2, pad, BLACK)

    # Grid, ticks and tick labels.
    for t, s in zip(yticks, ytexts, strict=True):
        y = round(to_py(t))
        draw.line((left, y, right, y), fill=GRID_GRAY, width=ss)
        draw.line((left - tick_len, y, left, y), fill=BLACK, width=ss)
        tw = _text_width(f_tick, s)
        _draw_text(draw, (left - tick_len - 3 * ss - tw, y - lh_tick / 2), s, f_tick, BLACK)
    for t, s in zip(xticks, xtexts, strict=True):
        xp = round(to_px(t))
        draw.line((xp, top, xp, bottom), fill=GRID_GRAY, width=ss)
        draw.line((xp, bottom, xp, bottom + tick_len), fill=BLACK, width=ss)
        tw = _text_width(f_tick, s)
        _draw_text(draw, (xp - tw / 2, bottom + tick_len + 2 * ss), s, f_tick, BLACK)
    draw.rectangle((left, top, right, bottom), outline=BLACK, width=ss)

    # Axis labels.
    xl = _wrap(f_label, x_label, right - left, max_lines=1)
    _draw_lines_centered(draw, f_label, xl, (left + right) / 2, H - pad - lh_label, BLACK)
    yl_text = _wrap(f_label, y_label, bottom - top, max_lines=1)
    if yl_text:
        yl = _rotated_text(f_label, yl_text[0])
        canvas.paste(yl, (pad, round((top + bottom) / 2 - yl.height / 2)))

    # Marker line, labelled just above the frame (never over the data).
    if has_mark and mark_x is not None:
        mx = to_px(mark_x)
        _dashed_vline(draw, mx, top + ss, bottom - ss, MARK_RED, 2 * ss, 6 * ss)
        text = mark_label if mark_label is not None else f"x = {mark_x:g}"
        tw = _text_width(f_tick, text)
        tx = min(max(mx - tw / 2, pad), W - pad - tw)
        _draw_text(draw, (tx, mark_top), text, f_tick, MARK_RED)

    # Series.
    r = 3.5 * ss
    for k, name in enumerate(names):
        c = PALETTE[k % len(PALETTE)]
        shape = MARKERS[k % len(MARKERS)]
        pts: list[tuple[float, float] | None] = []
        for xv, yv in zip(xs, series[name], strict=True):
            fy = float(yv)
            pts.append((to_px(xv), to_py(fy)) if math.isfinite(fy) else None)
        seg: list[tuple[float, float]] = []
        for p in [*pts, None]:
            if p is None:
                if len(seg) > 1:
                    draw.line(seg, fill=c, width=2 * ss, joint="curve")
                seg = []
            else:
                seg.append(p)
        for p in pts:
            if p is not None:
                _marker(draw, shape, p[0], p[1], r, c)

    # Legend.
    ly = pad + lh_title + pad
    for row_items in legend_rows:
        row_w = (
            sum(swatch + 6 * ss + _text_width(f_tick, names[k]) + 18 * ss for k in row_items)
            - 18 * ss
        )
        lx = (W - row_w) / 2
        for k in row_items:
            c = PALETTE[k % len(PALETTE)]
            cy = ly + lh_tick / 2
            draw.line((lx, cy, lx + swatch, cy), fill=c, width=2 * ss)
            _marker(draw, MARKERS[k % len(MARKERS)], lx + swatch / 2, cy, r, c)
            _draw_text(draw, (lx + swatch + 6 * ss, ly), names[k], f_tick, BLACK)
            lx += swatch + 6 * ss + _text_width(f_tick, names[k]) + 18 * ss
        ly += lh_tick + 4 * ss

    out = canvas.resize((width, height), Image.Resampling.LANCZOS)
    return img.encode_png(_from_pil(out))
