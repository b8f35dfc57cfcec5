from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from worker.engine.images import decode_image
from worker.engine.render import (
    VIRIDIS,
    colorbar,
    colorize,
    gray_images,
    grid,
    hcat,
    heatmap,
    line_plot,
    strip,
    vcat,
)

LEVELS = [*range(0, 251, 10), 255]


def _images(b: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=gen) * 255


def test_strip_size_without_labels_is_exact_and_keeps_pixels() -> None:
    x = _images(3, 20)
    out = strip(x, None, pad=4)
    assert out.dtype == torch.uint8
    assert out.shape == (3, 20 + 8, 3 * 20 + 4 * 4)
    # The second image sits at (pad, pad + W + pad), unchanged apart from 8-bit quantization.
    assert torch.equal(out[:, 4:24, 28:48], torch.round(x[1]).to(torch.uint8))
    assert bool((out[:, :4] == 255).all())  # white margin


def test_strip_with_labels_adds_a_caption_band() -> None:
    x = _images(2, 32)
    out = strip(x, ["g = 0", "g = 255"], pad=4)
    assert out.shape[2] == 2 * 32 + 3 * 4
    assert out.shape[1] > 32 + 8
    caption = out[:, 32 + 8 :, :]
    assert bool((caption < 128).any())  # some dark text was drawn


def test_strip_validates_arguments() -> None:
    with pytest.raises(ValueError, match="expected 2 labels"):
        strip(_images(2, 8), ["a"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        strip(torch.zeros(3, 8, 8))


def test_grid_resizes_mixed_sizes_to_one_cell() -> None:
    rows = [
        [_images(1, 224)[0], _images(1, 224, 1)[0], _images(1, 224, 2)[0]],
        [_images(1, 299)[0], _images(1, 299, 1)[0], _images(1, 299, 2)[0]],
    ]
    out = grid(rows, ["efficientnet_lite0", "inception_v3"], ["goldfish", "soccer ball", "cat"])
    assert out.dtype == torch.uint8
    # Cells are 299 (the largest side); 3 columns and 2 rows plus labels and padding.
    assert out.shape[2] > 3 * 299 and out.shape[1] > 2 * 299
    small = grid(rows, ["a", "b"], ["x", "y", "z"], cell=64, pad=2)
    assert small.shape[2] > 3 * 64 and small.shape[1] > 2 * 64
    assert small.shape[1] < 2 * 64 + 2 * 3 + 64  # no room wasted on short labels


def test_grid_validates_shape_of_the_table() -> None:
    im = _images(1, 16)[0]
    with pytest.raises(ValueError, match="expected 2 images in row 0"):
        grid([[im]], ["m"], ["a", "b"])
    with pytest.raises(ValueError, match="one row label per row"):
        grid([[im], [im]], ["m"], ["a"])


def test_gray_images_repeat_the_gray_in_rgb() -> None:
    g = torch.tensor([[[0, 10], [128, 255]]])
    out = gray_images(g)
    assert out.shape == (1, 3, 2, 2)
    assert out.dtype == torch.float32
    for c in range(3):
        assert out[0, c].tolist() == [[0.0, 10.0], [128.0, 255.0]]


def test_heatmap_endpoints_are_the_colormap_ends() -> None:
    maps = torch.tensor([[[0.0, 8.0], [-1.0, 9.0]]], dtype=torch.float64)
    out = heatmap(maps, 0.0, 8.0, 4)
    assert out.shape == (1, 3, 4, 4)
    assert out.dtype == torch.uint8
    assert out[0, :, 0, 0].tolist() == list(VIRIDIS[0])  # vmin
    assert out[0, :, 0, 3].tolist() == list(VIRIDIS[-1])  # vmax
    assert out[0, :, 3, 0].tolist() == list(VIRIDIS[0])  # below: clamped
    assert out[0, :, 3, 3].tolist() == list(VIRIDIS[-1])  # above: clamped


def test_heatmap_upscales_by_nearest_neighbour() -> None:
    maps = torch.arange(9, dtype=torch.float64).reshape(1, 3, 3)
    out = heatmap(maps, 0.0, 8.0, 9)
    # Each cell is a 3×3 block of one colour.
    for r in range(3):
        for c in range(3):
            block = out[0, :, 3 * r : 3 * r + 3, 3 * c : 3 * c + 3].reshape(3, -1)
            assert bool((block == block[:, :1]).all())


def test_colorize_is_matplotlibs_viridis() -> None:
    values = torch.tensor([-0.5, 0.0, 0.1, 1 / 3, 0.5, 0.999, 1.0, 1.5], dtype=torch.float64)
    expected = matplotlib.colormaps["viridis"](values.numpy(), bytes=True)[:, :3]
    assert colorize(values).tolist() == expected.tolist()
    assert len(VIRIDIS) == 256
    assert colorize(torch.tensor([float("nan")]))[0].tolist() == list(VIRIDIS[0])


def test_heatmap_validates_range() -> None:
    with pytest.raises(ValueError, match="vmin < vmax"):
        heatmap(torch.zeros(1, 2, 2), 1.0, 1.0, 8)


def test_colorbar_has_the_requested_height_and_viridis_colors() -> None:
    bar = colorbar(0.0, 8.0, "2D entropy (bits)", 200)
    assert bar.dtype == torch.uint8
    assert bar.shape[0] == 3 and bar.shape[1] == 200
    assert 16 < bar.shape[2] < 200  # cropped to the bar, its ticks and its label
    # Down the middle of the bar, inside its outline: viridis from yellow (vmax) to purple.
    column = [c for c in bar[:, :, 10].T.tolist() if c != [255, 255, 255]][1:-1]
    assert len(column) > 150
    lut = torch.tensor(VIRIDIS, dtype=torch.float64)
    distance, nearest = (lut[None] - torch.tensor(column)[:, None]).abs().amax(-1).min(dim=1)
    assert float(distance.max()) <= 1.0  # each pixel covers one or two viridis colors
    assert int(nearest[0]) >= 250 and int(nearest[-1]) <= 5
    assert nearest.diff().le(0).all()  # falling from top to bottom
    assert bool((bar[:, :, 20:] < 100).any())  # tick values and the label
    assert torch.equal(bar, colorbar(0.0, 8.0, "2D entropy (bits)", 200))


def test_colorbar_validates_arguments() -> None:
    with pytest.raises(ValueError, match="vmin < vmax"):
        colorbar(1.0, 1.0, "bits", 200)
    with pytest.raises(ValueError, match="height"):
        colorbar(0.0, 1.0, "bits", 20, font_size=10)


def _plot(**kw: object) -> bytes:
    args: dict[str, object] = {
        "title": "Second-order total entropy",
        "x_label": "initial gray level g (0–255)",
        "y_label": "second-order total entropy (bits)",
    }
    args.update(kw)
    series = {"soccer ball": [float(g % 70) for g in LEVELS]}
    return line_plot(LEVELS, series, **args)  # type: ignore[arg-type]


def test_line_plot_is_a_png_of_the_requested_size() -> None:
    data = _plot(size=(640, 400), mark_x=60)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert im.size == (640, 400)
    pixels = decode_image(data)
    assert bool((pixels < 100).any())  # axes and text
    red = (pixels[0] > 150) & (pixels[1] < 80) & (pixels[2] < 80)
    assert bool(red.any())  # the marker line


def test_line_plot_is_deterministic_and_untagged() -> None:
    assert _plot(mark_x=60) == _plot(mark_x=60)
    assert _plot(mark_x=60) != _plot(mark_x=70)
    with Image.open(io.BytesIO(_plot())) as im:
        assert "Software" not in im.info  # no matplotlib version in the bytes


def test_line_plot_ignores_the_machines_matplotlib_settings() -> None:
    before = _plot(mark_x=60)
    with matplotlib.rc_context({"lines.linewidth": 9.0, "axes.facecolor": "black"}):
        assert _plot(mark_x=60) == before
    assert matplotlib.rcParams["lines.linewidth"] != 9.0


def test_line_plot_draws_each_series_in_its_color() -> None:
    data = line_plot(
        [0, 1, 2], {"a": [0.0, 1.0, 2.0], "b": [2.0, 1.0, 0.0]},
        title="t", x_label="x", y_label="y", size=(400, 300),
    )  # fmt: skip
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3)
    found = {tuple(int(v) for v in p) for p in pixels}
    for color in ("#1f77b4", "#ff7f0e"):  # matplotlib's default first two colors
        rgb = tuple(round(255 * v) for v in matplotlib.colors.to_rgb(color))
        assert rgb in found


def test_line_plot_several_series_and_gaps() -> None:
    series = {
        "goldfish": [1.0, 2.0, float("nan"), 4.0],
        "soccer ball": [4.0, 3.0, 2.0, 1.0],
    }
    data = line_plot(
        [0, 10, 20, 30], series, title="t", x_label="g (0–255)", y_label="bits", size=(400, 300)
    )
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (400, 300)


def test_line_plot_validates_lengths() -> None:
    with pytest.raises(ValueError, match="expected 3 values in series 'a', got 2"):
        line_plot([0, 1, 2], {"a": [1.0, 2.0]}, title="t", x_label="x", y_label="y")


def test_layout_helpers() -> None:
    a = torch.zeros(3, 10, 20, dtype=torch.uint8)
    b = torch.full((3, 5, 7), 9, dtype=torch.uint8)
    assert hcat([a, b], pad=2).shape == (3, 10, 29)
    assert vcat([a, b], pad=2).shape == (3, 17, 20)
    assert hcat([a, b]).shape == (3, 10, 31)
