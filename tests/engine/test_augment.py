"""Per-step random transformations: seeded draws, exact shifts, views in image-major order."""

from __future__ import annotations

import pytest
import torch
from optioncheck import OptionCheck

from specs import StepAugment
from worker.engine import augment as A
from worker.engine import transforms as T

AUG = StepAugment(views=4, jitter=3, max_rotation=30.0, scale_min=0.9, scale_max=1.1)


def ramp(size: int = 8) -> torch.Tensor:
    """(1, 3, size, size): value 10 * column + row, distinct everywhere."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (10.0 * xx + yy).expand(3, size, size)[None].float()


def test_draw_is_seeded_and_within_bounds() -> None:
    a = A.draw(A.generator(7), AUG)
    b = A.draw(A.generator(7), AUG)
    c = A.draw(A.generator(8), AUG)
    assert torch.equal(a.angles, b.angles) and torch.equal(a.shifts, b.shifts)
    assert not torch.equal(a.angles, c.angles)
    assert a.angles.shape == (4,) and a.shifts.shape == (4, 2)
    assert bool((a.angles.abs() <= 30).all())
    assert bool(((a.scales >= 0.9) & (a.scales <= 1.1)).all())
    assert bool((a.shifts.abs() <= 3).all())


def test_generator_stream_continues_across_draws() -> None:
    g = A.generator(1)
    first, second = A.draw(g, AUG), A.draw(g, AUG)
    assert not torch.equal(first.angles, second.angles)


def test_image_seed_depends_on_seed_target_and_gray_not_on_batch() -> None:
    s = A.image_seed(0, 805, 0.0)
    assert s == A.image_seed(0, 805, 0.0)
    assert (
        len({s, A.image_seed(1, 805, 0.0), A.image_seed(0, 1, 0.0), A.image_seed(0, 805, 10.0)})
        == 4
    )
    assert 0 <= s < 2**63


@pytest.mark.parametrize(("dy", "dx"), [(0, 0), (1, 0), (0, 2), (-2, 1), (3, -3)])
def test_shift_equals_roll_with_black_fill(dy: int, dx: int) -> None:
    x = ramp()
    expected = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        expected[:, :, :dy] = 0
    elif dy < 0:
        expected[:, :, dy:] = 0
    if dx > 0:
        expected[:, :, :, :dx] = 0
    elif dx < 0:
        expected[:, :, :, dx:] = 0
    assert torch.equal(A.shift(x, dy, dx), expected)


def test_shift_by_one_column_of_a_ramp() -> None:
    out = A.shift(ramp(4), 0, 1)
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 10.0, 20.0]


def test_apply_pure_jitter_is_exact_and_image_major() -> None:
    x = torch.cat([ramp(), ramp() + 100])
    draws = [
        A.Draw(
            torch.zeros(2, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            torch.tensor([[0, 1], [2, 0]]),
        ),
        A.Draw(
            torch.zeros(2, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            torch.tensor([[0, 0], [-1, -1]]),
        ),
    ]
    out = A.apply(x, draws)
    assert out.shape == (4, 3, 8, 8)
    assert torch.equal(out[0], A.shift(x[:1], 0, 1)[0])
    assert torch.equal(out[1], A.shift(x[:1], 2, 0)[0])
    assert torch.equal(out[2], x[1])
    assert torch.equal(out[3], A.shift(x[1:], -1, -1)[0])


def test_apply_quarter_turn_equals_rot90() -> None:
    x = ramp()
    d = A.Draw(
        torch.tensor([90.0], dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.long),
    )
    assert torch.equal(A.apply(x, [d]), torch.rot90(x, 1, dims=(2, 3)))


def test_apply_rotation_matches_warp_and_is_differentiable() -> None:
    x = (ramp() * 2).requires_grad_(True)
    d = A.draw(
        A.generator(3), StepAugment(views=3, max_rotation=180.0, scale_min=0.8, scale_max=1.2)
    )
    out = A.apply(x, [d])
    ref = T.warp(x.detach().repeat(3, 1, 1, 1), d.angles, d.scales)
    assert torch.allclose(out.detach(), ref)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_apply_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="one draw per image"):
        A.apply(ramp(), [])


def test_view_scale_resamples_a_zoomed_view_at_the_image_pixel_scale() -> None:
    """An 8 px ramp seen on 4 px at zoom 2: exactly the center 4 × 4 pixels; an offset of 0.25
    (normalized) moves that crop one pixel right."""
    x = ramp()
    center = A.Draw(
        torch.zeros(1, dtype=torch.float64),
        torch.full((1,), 2.0, dtype=torch.float64),
        torch.zeros(1, 2, dtype=torch.long),
        view_scale=0.5,
    )
    out = A.apply(x, [center])
    assert out.shape == (1, 3, 4, 4)
    assert torch.allclose(out, x[:, :, 2:6, 2:6], atol=1e-4)
    moved = A.Draw(
        center.angles, center.scales, center.shifts, torch.tensor([[0.25, 0.0]]), view_scale=0.5
    )
    assert torch.allclose(A.apply(x, [moved]), x[:, :, 2:6, 3:7], atol=1e-4)


def test_view_scale_comes_from_the_settings_and_keeps_gradients() -> None:
    cfg = StepAugment(views=3, jitter=2, max_rotation=180.0, scale_min=1.5, scale_max=2.0,
                      translate=1.0, view_scale=0.5)  # fmt: skip
    x = (ramp(64) / 4).requires_grad_(True)
    d = A.draw(A.generator(5), cfg)
    assert d.view_scale == 0.5
    out = A.apply(x, [d])
    assert out.shape == (3, 3, 32, 32)
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


ZOOM_OUT = StepAugment(views=4, jitter=3, max_rotation=180.0, scale_min=0.6, scale_max=0.8)
"""Views that always reach outside the image (a zoom out, turned)."""


def test_fill_shows_the_color_outside_the_image() -> None:
    """A flat image of the fill color stays exactly that color in every view; with the black
    fill the same views show black beside it."""
    gray = torch.tensor([127.0, 100.0, 30.0])
    x = gray.view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    d = A.draw(A.generator(3), ZOOM_OUT)
    assert torch.equal(A.apply(x, [d], gray), gray.view(1, 3, 1, 1).expand(4, 3, 16, 16))
    black = A.apply(x, [d])
    assert float(black.amin()) == 0.0 and float(black.amax()) == pytest.approx(127.0)


def test_fill_black_is_the_default_and_inside_the_image_nothing_changes() -> None:
    """A black fill given is the default's exact bytes; another fill changes only what lies
    outside (the center of a zoom out is the same pixel), and the views stay within 0..255."""
    x = ramp(16) * 1.5
    d = A.draw(A.generator(4), ZOOM_OUT)
    plain = A.apply(x, [d])
    assert torch.equal(A.apply(x, [d], torch.zeros(3)), plain)
    white = A.apply(x, [d], torch.full((3,), 255.0))
    assert not torch.equal(white, plain)
    assert torch.allclose(white[..., 6:10, 6:10], plain[..., 6:10, 6:10], atol=1e-3)
    assert float(white.amin()) >= 0.0 and float(white.amax()) <= 255.0
    z = (x / 2).requires_grad_(True)
    A.apply(z, [d], torch.full((3,), 127.0)).sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


def test_engine_zero_fill_same_bytes_batched_equals_one_by_one(option_check: OptionCheck) -> None:
    """The step views filled with the model's zero: another picture than with black, the same
    bytes batched and one by one, and the target probability up."""
    option_check.run({"fill": "zero"}, {"fill": "black"}, section="augment")
