"""Transparency maps: accumulated during the optimization, returned as tensors, saved as PNGs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from specs import OptimizeSpec, VisualizeSpec
from worker.engine import augment as A
from worker.engine import optimize as O
from worker.engine import param as P
from worker.engine import transparency as TR
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry
from worker.jobs.base import JobContext
from worker.jobs.visualize import run_visualize

SOCCER = 9


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> LoadedModel:
    return Registry(models_dir=models_dir).load("tiny")


def plus(kind: str = "maco") -> OptimizeSpec:
    return OptimizeSpec.model_validate(
        {
            "method": "invariant+",
            "param": {"kind": kind},
            "optimizer": {"max_steps_per_round": 3},
            "augment": {"views": 2},
        }
    )


@pytest.mark.parametrize("kind", ["maco", "fourier"])
def test_map_is_non_negative_with_the_image_size(tiny: LoadedModel, kind: str) -> None:
    res = O.visualize(tiny, flat_gray([0, 120], 32), torch.tensor([SOCCER, 3]), plus(kind),
                      transparency=True)  # fmt: skip
    for r in res:
        assert r.transparency is not None
        assert r.transparency.shape == (32, 32)
        assert float(r.transparency.min()) >= 0.0 and float(r.transparency.max()) > 0.0


def test_paper_method_has_a_map_too(tiny: LoadedModel) -> None:
    spec = OptimizeSpec(schedule=[{"op": "rotate", "value": 10.0, "repeat": 2}])
    res = O.visualize(tiny, flat_gray([127], 32), torch.tensor([SOCCER]), spec, transparency=True)
    m = res[0].transparency
    assert m is not None and m.shape == (32, 32) and float(m.min()) >= 0 and float(m.max()) > 0


def test_no_map_unless_asked_and_asking_changes_nothing_else(tiny: LoadedModel) -> None:
    x, tg = flat_gray([0], 32), torch.tensor([SOCCER])
    plain = O.visualize(tiny, x, tg, plus())[0]
    mapped = O.visualize(tiny, x, tg, plus(), transparency=True)[0]
    assert plain.transparency is None
    assert encode_png(plain.image) == encode_png(mapped.image)  # same seed: same bytes
    again = O.visualize(tiny, x, tg, plus(), transparency=True)[0]
    assert again.transparency is not None and mapped.transparency is not None
    assert torch.equal(again.transparency, mapped.transparency)


def test_the_map_does_not_depend_on_how_views_are_split_into_passes(tiny: LoadedModel) -> None:
    """The map is the |gradient| of each step's objective (the mean over the views), whether
    the views go through the model in one pass or several (a smaller memory budget)."""
    spec = OptimizeSpec(method="invariant+")
    small, nv = O.Runtime(pass_memory_mb=1), spec.augment.views
    assert nv > 1
    assert O.plan_passes(tiny, small, 32, 1, nv, grad=True).views < nv
    assert O.plan_passes(tiny, O.Runtime(), 32, 1, nv, grad=True).views == nv
    x, tg = flat_gray([128], 32), torch.tensor([SOCCER])
    one = O.visualize(tiny, x, tg, spec, transparency=True)[0]
    several = O.visualize(tiny, x, tg, spec, transparency=True, runtime=small)[0]
    assert [r.steps for r in one.trace] == [r.steps for r in several.trace]
    assert torch.equal(one.image, several.image)
    assert one.transparency is not None and several.transparency is not None
    torch.testing.assert_close(several.transparency, one.transparency, rtol=1e-4, atol=1e-6)


def test_an_image_that_takes_no_step_adds_nothing_to_its_map(tiny: LoadedModel) -> None:
    """The pass that finds a round over (its limit reached) makes no step and marks nothing,
    with the views in one pass or in several."""
    spec = OptimizeSpec(method="invariant+")
    x, tg = flat_gray([128], 32), torch.tensor([SOCCER])
    for plan in (O.PassPlan(images=1, views=4), O.PassPlan(images=1, views=2)):
        param = P.PixelParam(x.clone())
        sal = torch.zeros(1, 32, 32)
        steps, _, _ = O.param_round(
            tiny, param, tg, torch.tensor([True]), spec.optimizer, torch.tensor([0]),
            lr=1.0, augment=spec.augment, gens=[A.generator(1)], plan=plan, saliency=sal,
        )  # fmt: skip
        assert int(steps[0]) == 0
        assert float(sal.abs().sum()) == 0.0


def test_alpha_clips_outliers_and_scales_to_one() -> None:
    m = torch.zeros(10, 10)
    m[0, :] = 1.0
    m[0, 0] = 1000.0  # one outlier does not set the scale
    a = TR.alpha(m, quantile=0.95)
    assert float(a.max()) == 1.0 and float(a[0, 5]) == 1.0 and float(a[5, 5]) == 0.0
    assert torch.equal(TR.alpha(torch.zeros(4, 4)), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        TR.alpha(torch.zeros(1, 4, 4))


def test_rgba_has_four_channels_and_the_map_as_alpha() -> None:
    img = torch.full((3, 8, 8), 200.0)
    a = torch.linspace(0, 1, 64).view(8, 8)
    out = TR.rgba(img, a)
    assert out.shape == (4, 8, 8) and out.dtype == torch.uint8
    assert int(out[3, 0, 0]) == 0 and int(out[3, 7, 7]) == 255
    with Image.open(io.BytesIO(encode_png(out))) as im:
        assert im.mode == "RGBA" and im.size == (8, 8)
    with pytest.raises(ValueError, match="alpha of shape"):
        TR.rgba(img, torch.zeros(4, 4))


def test_visualize_job_saves_the_map_and_the_rgba_picture(models_dir: Path) -> None:
    spec = VisualizeSpec.model_validate(
        {"model": "tiny", "targets": ["soccer ball"], "method": "invariant+",
         "optimizer": {"max_steps_per_round": 2}, "transparency": True}
    )  # fmt: skip
    out = run_visualize(spec, JobContext(Registry(models_dir=models_dir), device="cpu"))
    arts = {a.name: a for a in out.artifacts}
    names = out.result["targets"][0]["artifacts"]
    with Image.open(io.BytesIO(arts[names["transparency"]].data)) as im:
        assert im.mode == "L" and im.size == (64, 64)
    with Image.open(io.BytesIO(arts[names["rgba"]].data)) as im:
        assert im.mode == "RGBA" and im.size == (64, 64)
    off = VisualizeSpec.model_validate({"model": "tiny", "targets": [SOCCER]})
    assert "transparency" not in off.model_dump() or not off.transparency
