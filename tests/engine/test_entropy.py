from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from specs import EntropySettings, SweepSpec
from worker.engine import entropy as E
from worker.engine.entropy import (
    EntropyReport,
    best_gray,
    entropy2d,
    entropy_map,
    gray,
    gray_change,
    measure,
    neighbor_mean,
    second_order_map,
    second_order_total,
)
from worker.engine.models import Registry
from worker.jobs.base import JobContext
from worker.jobs.sweep import run_sweep

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _rgb(*colors: tuple[float, float, float]) -> torch.Tensor:
    """A (1, 3, 1, N) image with the given RGB pixels in a row."""
    return torch.tensor(colors, dtype=torch.float32).T.reshape(1, 3, 1, len(colors))


def _ref_entropy(values: list[tuple[int, int]]) -> float:
    """Shannon entropy in bits of a list of pairs, the slow obvious way."""
    n = len(values)
    return -sum(c / n * math.log2(c / n) for c in Counter(values).values())


def _ref_map(g: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Entropy map by a loop over windows, with j from the full image (tests only)."""
    j = neighbor_mean(g)
    b, h, w = g.shape
    hh, ww = (h - window) // stride + 1, (w - window) // stride + 1
    out = torch.zeros(b, hh, ww, dtype=torch.float64)
    for k in range(b):
        for r in range(hh):
            for c in range(ww):
                ys = slice(r * stride, r * stride + window)
                xs = slice(c * stride, c * stride + window)
                pairs = list(
                    zip(
                        g[k, ys, xs].flatten().tolist(),
                        j[k, ys, xs].flatten().tolist(),
                        strict=True,
                    )
                )
                out[k, r, c] = _ref_entropy(pairs)
    return out


# --------------------------------------------------------------------------- gray


def test_gray_of_known_colours_is_bt601_floor() -> None:
    x = _rgb((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (10, 10, 10), (127, 127, 127))
    assert gray(x).tolist() == [[[76, 150, 28, 255, 10, 127]]]
    assert gray(x).dtype == torch.int64


def test_gray_keeps_every_flat_level() -> None:
    # Float arithmetic would give floor(9.99999) = 9 for some levels; integers never do.
    levels = torch.arange(256, dtype=torch.float32)
    x = levels.reshape(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert gray(x).reshape(-1).tolist() == list(range(256))


def test_gray_quantizes_floats_like_a_saved_png() -> None:
    # Round half to even, then clip, then BT.601.
    x = _rgb((10.5, 10.5, 10.5), (11.5, 11.5, 11.5), (300.0, 300.0, 300.0), (-4.0, -4.0, -4.0))
    assert gray(x).tolist() == [[[10, 12, 255, 0]]]


def test_gray_accepts_uint8_and_rejects_bad_shapes() -> None:
    u8 = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
    assert gray(u8).tolist() == [[[76]]]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        gray(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="int32"):
        gray(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_gray_change_exact_values() -> None:
    g = torch.tensor([[[10, 20], [0, 30]], [[50, 50], [50, 50]]])
    signed, absolute = gray_change(g, [10, 60])
    assert signed.dtype == torch.float64
    assert signed.tolist() == [5.0, -10.0]
    assert absolute.tolist() == [10.0, 10.0]


def test_gray_change_needs_one_level_per_image() -> None:
    with pytest.raises(ValueError, match="one initial gray level per image"):
        gray_change(torch.zeros(2, 3, 3, dtype=torch.int64), [0])


# --------------------------------------------------------------------------- 2D entropy


def _half_split() -> torch.Tensor:
    g = torch.zeros(1, 4, 4, dtype=torch.int64)
    g[:, :, 2:] = 255
    return g


def _checkerboard() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    return (((yy + xx) % 2) * 255).unsqueeze(0)


def test_neighbor_mean_of_half_split_by_hand() -> None:
    # Columns 0 | 0 | 255 | 255; with replicate padding the 3-column sums are
    # 0, 255, 510, 765 (times 3 rows), so j = 0, 765 // 9 = 85, 1530 // 9 = 170, 255.
    assert neighbor_mean(_half_split()).tolist() == [[[0, 85, 170, 255]] * 4]


def test_neighbor_mean_of_checkerboard_by_hand() -> None:
    # A 0 surrounded by four 255 edge-neighbours: 1020 // 9 = 113; a 255 with five 255s in its
    # window: 1275 // 9 = 141. Replicate padding changes which case applies at the border.
    expected = [
        [113, 113, 141, 141],
        [113, 113, 141, 141],
        [141, 141, 113, 113],
        [141, 141, 113, 113],
    ]
    assert neighbor_mean(_checkerboard()).tolist() == [expected]


def test_entropy_of_flat_image_is_exactly_zero() -> None:
    g = torch.full((3, 7, 5), 42, dtype=torch.int64)
    h = entropy2d(g)
    assert h.dtype == torch.float64
    assert h.tolist() == [0.0, 0.0, 0.0]


def test_entropy_of_half_split_is_two_bits() -> None:
    # Pairs (0, 0), (0, 85), (255, 170), (255, 255), four pixels each: p = 1/4 -> 2 bits.
    assert entropy2d(_half_split()).tolist() == [2.0]


def test_entropy_of_checkerboard_is_two_bits() -> None:
    # Pairs (0, 113), (0, 141), (255, 113), (255, 141), four pixels each.
    assert entropy2d(_checkerboard()).tolist() == [2.0]


def test_entropy_of_single_bright_pixel() -> None:
    # 3×3 zeros with 90 in the middle: every replicate-padded window holds the centre once,
    # so j = 90 // 9 = 10 everywhere; pairs (0, 10) × 8 and (90, 10) × 1.
    g = torch.zeros(1, 3, 3, dtype=torch.int64)
    g[0, 1, 1] = 90
    assert neighbor_mean(g).unique().tolist() == [10]
    expected = -(8 / 9 * math.log2(8 / 9) + 1 / 9 * math.log2(1 / 9))
    assert entropy2d(g).item() == pytest.approx(expected, abs=1e-12)


def test_entropy_matches_reference_on_random_images() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randint(0, 4, (2, 9, 11), generator=gen) * 60
    j = neighbor_mean(g)
    for k in range(2):
        pairs = list(zip(g[k].flatten().tolist(), j[k].flatten().tolist(), strict=True))
        assert entropy2d(g)[k].item() == pytest.approx(_ref_entropy(pairs), abs=1e-12)


def test_entropy_rejects_float_or_out_of_range_gray() -> None:
    with pytest.raises(ValueError, match="integer"):
        entropy2d(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"0\.\.255, got 256\.\.256"):
        entropy2d(torch.full((1, 4, 4), 256))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        entropy2d(torch.zeros(4, 4, dtype=torch.int64))


# --------------------------------------------------------------------------- maps


@pytest.mark.parametrize(
    ("h", "w", "window", "stride", "shape"),
    [
        (32, 32, 16, 4, (5, 5)),
        (224, 224, 16, 4, (53, 53)),
        (20, 33, 8, 3, (5, 9)),
        (8, 8, 8, 1, (1, 1)),
    ],
)
def test_entropy_map_shape(
    h: int, w: int, window: int, stride: int, shape: tuple[int, int]
) -> None:
    g = torch.zeros(2, h, w, dtype=torch.int64)
    m = entropy_map(g, window, stride)
    assert m.shape == (2, *shape)
    assert m.dtype == torch.float64
    assert bool((m == 0).all())


def test_entropy_map_equals_slow_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randint(0, 256, (2, 21, 18), generator=gen)
    g[1] = torch.randint(0, 3, (21, 18), generator=gen) * 100  # many repeated pairs
    m = entropy_map(g, window=6, stride=3)
    ref = _ref_map(g, 6, 3)
    assert m.shape == ref.shape == (2, 6, 5)
    torch.testing.assert_close(m, ref, rtol=0, atol=1e-12)


def test_sorting_in_chunks_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows are sorted in chunks of ``ROW_CHUNK_VALUES`` values (bounded memory): chunks
    of one or a few rows give exactly the map of one sort."""
    gen = torch.Generator().manual_seed(2)
    g = torch.randint(0, 256, (3, 21, 18), generator=gen)
    whole, images = entropy_map(g, window=6, stride=3), entropy2d(g)
    for chunk in (36, 100, 1):  # one 6 × 6 window per chunk, a few, one value (still a row)
        monkeypatch.setattr(E, "ROW_CHUNK_VALUES", chunk)
        assert torch.equal(entropy_map(g, window=6, stride=3), whole)
        assert torch.equal(entropy2d(g), images)  # whole images: one row each


def test_entropy_map_takes_j_from_the_full_image() -> None:
    # One window covering the whole image is the image's own 2D entropy.
    g = _checkerboard()
    assert entropy_map(g, window=4, stride=1).tolist() == [[[2.0]]]
    # The top-left 2×2 window: pairs (0,113), (255,113), (255,113), (0,113) with j from the
    # full image -> two pairs, 1 bit. Cropping first would give a different j.
    assert entropy_map(g, window=2, stride=2)[0, 0, 0].item() == 1.0


def test_entropy_map_validates_arguments() -> None:
    g = torch.zeros(1, 8, 10, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"no larger than the image \(8×10\)"):
        entropy_map(g, window=9)
    with pytest.raises(ValueError, match="stride to be a positive integer, got 0"):
        entropy_map(g, window=4, stride=0)
    with pytest.raises(ValueError, match="window to be a positive integer"):
        entropy_map(g, window=0)


def test_second_order_map_shape_and_flat_input() -> None:
    m1 = torch.full((2, 53, 53), 3.7, dtype=torch.float64)
    m2 = second_order_map(m1, window=16, window2=8, stride2=2)
    assert m2.shape == (2, 23, 23)
    assert bool((m2 == 0).all())


def test_second_order_map_quantizes_with_the_fixed_scale() -> None:
    # With window 16 the scale is 255 / 8: entropy 0 -> 0 and the maximum 8 bits -> 255, so a
    # map split in halves of 0 and 8 bits is the half-split image again: 2 bits.
    m1 = torch.zeros(1, 4, 4, dtype=torch.float64)
    m1[:, :, 2:] = 8.0
    assert second_order_map(m1, window=16, window2=4, stride2=1).tolist() == [[[2.0]]]
    # 4 bits -> 127 (floor of 127.5) and 8 bits -> 255 are two levels.
    m1[:, :, :2] = 4.0
    q_pairs_h = second_order_map(m1, window=16, window2=4, stride2=1).item()
    g = torch.zeros(1, 4, 4, dtype=torch.int64)
    g[:, :, :2], g[:, :, 2:] = 127, 255
    assert q_pairs_h == entropy2d(g).item()


def test_second_order_map_of_too_small_map_says_so() -> None:
    with pytest.raises(ValueError, match="no larger than the image"):
        second_order_map(torch.zeros(1, 5, 5, dtype=torch.float64), window=16, window2=8)


def test_second_order_total_sum_and_mean() -> None:
    m2 = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    total, mean = second_order_total(m2)
    assert total.tolist() == [10.0, 0.5]
    assert mean.tolist() == [2.5, 0.125]


# --------------------------------------------------------------------------- report


def test_best_gray_is_the_argmax_first_on_ties() -> None:
    assert best_gray([0, 10, 20, 30], torch.tensor([1.0, 5.0, 3.0, 5.0])) == 10
    assert best_gray(torch.tensor([0, 10, 20]), [0.0, 0.0, 0.0]) == 0
    assert best_gray([0, 128, 255], [1.0, 2.0, 9.0]) == 255
    with pytest.raises(ValueError, match="as many totals as levels"):
        best_gray([0, 10], [1.0])


@pytest.mark.parametrize("device", DEVICES)
def test_measure_reports_everything_consistently(device: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 40, 40, generator=gen) * 255
    x[0] = 30.0  # a flat result: nothing changed, no information
    x = x.to(device)
    settings = EntropySettings(window=8, stride=4, window2=4, stride2=2)
    r = measure(x, [30, 100, 200], settings)
    assert isinstance(r, EntropyReport)
    assert r.gray.shape == (3, 40, 40)
    assert r.map1.shape == (3, 9, 9)
    assert r.map2.shape == (3, 3, 3)
    assert r.gray.device.type == r.map2.device.type == torch.device(device).type
    assert r.gray_change[0].item() == 0.0
    assert r.gray_change_abs[0].item() == 0.0
    assert r.entropy2d[0].item() == 0.0
    assert r.second_order_total[0].item() == 0.0
    torch.testing.assert_close(r.map1, entropy_map(r.gray, 8, 4))
    torch.testing.assert_close(r.second_order_total, r.map2.sum(dim=(1, 2)))
    torch.testing.assert_close(r.second_order_mean, r.map2.mean(dim=(1, 2)))
    expected_best = [30, 100, 200][int(r.second_order_total.argmax())]
    assert r.best_gray() == expected_best
    assert r.levels.tolist() == [30, 100, 200]


def test_measure_uses_default_settings() -> None:
    x = torch.zeros(2, 3, 64, 64)
    r = measure(x, [0, 0])
    assert r.map1.shape == (2, 13, 13)  # (64 - 16) // 4 + 1
    assert r.map2.shape == (2, 3, 3)  # (13 - 8) // 2 + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_entropy_map_is_the_same_on_cuda() -> None:
    gen = torch.Generator().manual_seed(3)
    g = torch.randint(0, 256, (2, 48, 48), generator=gen)
    cpu = entropy_map(g, 16, 4)
    gpu = entropy_map(g.cuda(), 16, 4)
    assert torch.equal(cpu, gpu.cpu())


def test_a_sweep_whose_windows_do_not_fit_the_model_fails_before_optimizing(
    models_dir: Path,
) -> None:
    """With ``size`` left out the spec cannot check the windows; the worker does, at the
    model's input size (tiny: 64 px, a first map of 13 cells), before any step."""
    steps: list[tuple[int, int, int, float]] = []
    ctx = JobContext(
        Registry(models_dir=models_dir), device="cpu",
        progress=lambda r, n, s, q: steps.append((r, n, s, q)),
    )  # fmt: skip
    spec = SweepSpec(model="tiny", target=9, entropy={"window2": 64})
    with pytest.raises(ValueError, match=r"entropy.window2 \(64\) .* \(13 cells"):
        run_sweep(spec, ctx)
    assert steps == []
