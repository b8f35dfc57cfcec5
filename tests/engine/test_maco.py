"""The ``maco`` parameterization (phase only, natural magnitude) and MACO-style random crops."""

from __future__ import annotations

import math

import pytest
import torch

from specs import ImageParameterization, StepAugment
from worker.engine import augment as A
from worker.engine import param as P
from worker.engine import transforms as T
from worker.engine.images import flat_gray

MACO = ImageParameterization(kind="maco")


def gens(*seeds: int) -> list[torch.Generator]:
    return [A.generator(s) for s in seeds]


def test_stored_spectrum_resizes_to_any_image() -> None:
    m = P.natural_magnitude(32, 24)
    assert m.shape == (3, 32, 13) and m.dtype == torch.float32
    assert bool((m >= 0).all()) and float(m[:, 0, 0].abs().max()) == 0.0
    # natural images: low frequencies carry more energy than high ones, in every channel
    assert bool((m[:, 1, 0] > m[:, 16, 0]).all()) and bool((m[:, 0, 1] > m[:, 0, 12]).all())


def test_phases_shapes_range_and_seeded_start() -> None:
    p = P.make_param(MACO, flat_gray([0, 200], 32), gens(1, 2))
    assert isinstance(p, P.MacoParam) and not p.clip
    assert p.data.shape == (2, 3, 32, 17)
    assert float(p.data.abs().max()) <= math.pi + 1e-6
    img = p.images()
    assert img.shape == (2, 3, 32, 32)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 255.0
    assert float(img.std()) > 5.0  # a random-phase natural-looking start, not a flat gray
    again = P.make_param(MACO, flat_gray([0, 200], 32), gens(1, 2))
    assert torch.equal(p.data, again.data)  # same seeds: same start
    assert not torch.equal(p.data[0], p.data[1])


def test_render_is_standardized_whatever_the_phases() -> None:
    p = P.MacoParam(flat_gray([0], 24), MACO, gens(0))
    g = torch.Generator().manual_seed(3)
    data = torch.rand(4, *p.data.shape[1:], generator=g) * 100.0
    img = p.render(data)
    logits = torch.log(img / (255.0 - img))
    c = torch.einsum("ij,njhw->nihw", p.color_inv, logits)
    assert torch.allclose(c.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(c.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-2)


def test_contrast_and_saturation_strengthen_the_colors() -> None:
    x = flat_gray([0], 32)
    base = P.MacoParam(x, MACO, gens(5)).images()
    strong_cfg = ImageParameterization(kind="maco", contrast=2.0, saturation=2.0)
    strong = P.MacoParam(x, strong_cfg, gens(5)).images()
    assert float(strong.std()) > float(base.std())
    spread = lambda im: float((im - im.mean(dim=1, keepdim=True)).abs().mean())  # noqa: E731
    assert spread(strong) > spread(base)  # channels further apart: more saturated


def test_encode_keeps_the_phase_of_a_rendered_image() -> None:
    p = P.MacoParam(flat_gray([0, 0], 32), MACO, gens(7, 8))
    img = p.images()
    again = p.render(p.encode(img))
    assert torch.allclose(again, img, atol=0.5)
    # a round's quarter turn: the structure turns (the fixed magnitude is not exactly isotropic)
    rot = torch.rot90(img, 1, dims=(2, 3))
    turned = p.render(p.encode(rot))
    corr = torch.corrcoef(torch.stack([turned.flatten(), rot.flatten()]))[0, 1]
    assert float(corr) > 0.8, float(corr)


def test_render_is_differentiable() -> None:
    p = P.MacoParam(flat_gray([0], 16), MACO, gens(0))
    d = p.data.clone().requires_grad_(True)
    p.render(d)[:, 0].sum().backward()
    assert d.grad is not None and float(d.grad.abs().sum()) > 0


def test_wrong_number_of_generators_is_refused() -> None:
    with pytest.raises(ValueError, match="one generator per image"):
        P.MacoParam(flat_gray([0, 0], 16), MACO, gens(1))


CROPS = StepAugment(views=6, scale_min=1.0, scale_max=3.0, translate=1.0, noise=4.0)


def test_crops_stay_inside_the_image_and_are_seeded() -> None:
    a, b = A.draw(A.generator(3), CROPS), A.draw(A.generator(3), CROPS)
    assert a.offsets is not None and b.offsets is not None
    assert torch.equal(a.offsets, b.offsets) and a.noise_seeds is not None
    room = (1.0 - 1.0 / a.scales)[:, None]
    assert bool((a.offsets.abs() <= room + 1e-12).all())
    plain = A.draw(A.generator(3), StepAugment(views=6))
    assert plain.offsets is None and plain.noise_seeds is None  # off: no extra randomness


def test_centered_crop_equals_the_zoom_and_noise_is_seeded() -> None:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    ang, sc = torch.tensor([30.0], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
    c = A.crop(x, ang, sc, torch.zeros(1, 2, dtype=torch.float64))
    assert torch.allclose(c, T.warp(x, ang, sc), atol=1e-3)
    d = A.draw(A.generator(4), CROPS)
    v1, v2 = A.apply(x, [d]), A.apply(x, [d])
    assert v1.shape == (6, 3, 16, 16) and torch.equal(v1, v2)
    quiet = A.Draw(d.angles, d.scales, d.shifts, d.offsets)
    assert not torch.equal(v1, A.apply(x, [quiet]))


def test_fourier_gains_keep_the_round_trip_and_start() -> None:
    cfg = ImageParameterization(kind="fourier", contrast=1.5, saturation=2.0, margin=64.0)
    x = flat_gray([0, 100], 16)
    p = P.FourierParam(x, cfg)
    assert torch.allclose(p.images(), torch.tensor([64.0, 100.0])[:, None, None, None]
                          .expand(2, 3, 16, 16), atol=1e-2)  # fmt: skip
    y = 130.0 + torch.linspace(-30, 30, 16)[None, None, None, :].expand(2, 3, 16, 16)
    assert torch.allclose(p.render(p.encode(y)), y, atol=1e-2)
