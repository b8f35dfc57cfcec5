from __future__ import annotations

import pytest
import torch

from specs import Operation, RandomViews, TransformTests
from worker.engine import transforms as T


def ramp(n: int = 3) -> torch.Tensor:
    """(1, 3, n, n) with values 0..n²-1 in row-major order, the same in every channel."""
    return torch.arange(n * n, dtype=torch.float32).reshape(1, 1, n, n).expand(1, 3, n, n).clone()


def test_rotate_90_of_a_ramp_is_exact() -> None:
    out = T.rotate(ramp(), 90)
    expected = torch.tensor([[2.0, 5.0, 8.0], [1.0, 4.0, 7.0], [0.0, 3.0, 6.0]])
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out, torch.rot90(ramp(), 1, dims=(2, 3)))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_multiples_of_90_match_rot90(k: int) -> None:
    x = torch.rand(2, 3, 6, 6) * 255
    assert torch.equal(T.rotate(x, 90 * k), torch.rot90(x, k, dims=(2, 3)))
    assert torch.equal(T.rotate(x, -90 * k), torch.rot90(x, -k, dims=(2, 3)))


def test_rotation_fills_outside_with_black_and_keeps_center() -> None:
    x = torch.full((1, 3, 9, 9), 200.0)
    out = T.rotate(x, 45)
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]  # corner came from outside the square
    assert out[0, :, 4, 4].tolist() == [200.0, 200.0, 200.0]


def test_results_are_clipped_to_pixel_range() -> None:
    x = torch.tensor([-50.0, 300.0, 100.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    out = T.rotate(x, 90)
    assert out.min() >= 0 and out.max() <= 255
    assert out[0, :, 1, 1].tolist() == [0.0, 255.0, 100.0]


def test_scale_two_enlarges_the_center() -> None:
    x = torch.zeros(1, 3, 4, 4)
    x[..., 1:3, 1:3] = 100.0  # a 2x2 square in the middle
    out = T.scale(x, 2.0)
    assert torch.allclose(out[..., 1:3, 1:3], torch.full((1, 3, 2, 2), 100.0))
    assert out[..., 0, 0].sum() < out[..., 1, 1].sum()


def test_scale_down_fills_black_border() -> None:
    x = torch.full((1, 3, 8, 8), 255.0)
    out = T.scale(x, 0.5)
    assert out[0, 0, 0].tolist() == [0.0] * 8
    assert out[0, 0, 4, 4] == 255.0


def test_flips() -> None:
    x = ramp()
    assert T.apply(x, Operation(op="flip_h"))[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert T.apply(x, Operation(op="flip_v"))[0, 0, :, 0].tolist() == [6.0, 3.0, 0.0]


def test_warp_gives_each_image_its_own_view() -> None:
    x = ramp().repeat(2, 1, 1, 1)
    out = T.warp(x, torch.tensor([0.0, 90.0]), torch.tensor([1.0, 1.0]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], torch.rot90(x[1], 1, dims=(1, 2)))


def test_bad_shapes_are_rejected_with_what_came() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 4, 4\)"):
        T.rotate(torch.zeros(3, 4, 4), 10)
    with pytest.raises(ValueError, match="square"):
        T.rotate(torch.zeros(1, 3, 4, 5), 10)


def test_default_test_views() -> None:
    names, angles, scales = T.test_views(TransformTests())
    assert len(names) == 14
    assert names[:2] == ["rot0", "rot30"] and names[-2:] == ["scale0.9", "scale1.1"]
    assert angles.tolist()[-1] == 0.0 and scales.tolist()[11] == 1.0


def test_random_views_are_seeded_and_in_range() -> None:
    a1, s1 = T.random_views(RandomViews(count=16, seed=7))
    a2, s2 = T.random_views(RandomViews(count=16, seed=7))
    a3, _ = T.random_views(RandomViews(count=16, seed=8))
    assert torch.equal(a1, a2) and torch.equal(s1, s2)
    assert not torch.equal(a1, a3)
    assert bool((a1 >= 0).all() and (a1 < 360).all())
    assert bool((s1 >= 0.8).all() and (s1 <= 1.2).all())
