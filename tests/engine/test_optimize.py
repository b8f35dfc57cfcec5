"""Behaviour of Algorithm 1 on the tiny random-weight CNN (32 px, 10 classes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specs import Operation, OptimizerSettings, OptimizeSpec, StoppingCriterion
from worker.engine import optimize as O
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry

SOCCER = 9


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> LoadedModel:
    return Registry(models_dir=models_dir).load("tiny")


def short_spec(**kw: object) -> OptimizeSpec:
    base: dict[str, object] = {"schedule": [Operation(op="rotate", value=10.0, repeat=6)]}
    base.update(kw)
    return OptimizeSpec.model_validate(base)


def test_target_probability_rises(tiny: LoadedModel) -> None:
    x0 = flat_gray([255], 32)  # white: the tiny model gives soccer ball < 0.1 here
    q0 = float(O.target_probs(tiny, x0, torch.tensor([SOCCER]))[0])
    res = O.visualize(tiny, x0, torch.tensor([SOCCER]), short_spec())[0]
    assert q0 < 0.5
    assert res.q_final > 0.9 > q0
    assert res.trace[0].q_before == pytest.approx(q0, rel=1e-5)
    assert res.trace[0].q_after > res.trace[0].q_before


def test_round_stops_as_soon_as_q_target_is_passed(tiny: LoadedModel) -> None:
    cfg = OptimizerSettings(q_target=0.5, max_steps_per_round=500)
    x = flat_gray([255], 32)
    steps, _, qa = O.optimize_round(
        tiny, x, torch.tensor([SOCCER]), torch.tensor([True]), cfg, torch.tensor([500])
    )
    assert 0 < int(steps[0]) < 500
    assert float(qa[0]) > 0.5
    # one step fewer would not have been enough: rerun with that limit
    x2 = flat_gray([255], 32)
    _, _, qa2 = O.optimize_round(
        tiny, x2, torch.tensor([SOCCER]), torch.tensor([True]), cfg, steps - 1
    )
    assert float(qa2[0]) <= 0.5


@pytest.mark.parametrize("augmented", [False, True])
def test_q_target_one_never_ends_a_round_early(tiny: LoadedModel, augmented: bool) -> None:
    def trace(q: float) -> list[int]:
        body: dict[str, object] = {
            "schedule": [Operation(op="rotate", value=90.0, repeat=2)],
            "optimizer": {"q_target": q, "max_steps_per_round": 25},
        }
        if augmented:  # the invariant+ path: Fourier image, random views, augment.q_target
            body |= {"method": "invariant+", "final_round": False}
            body["augment"] = {"views": 2, "q_target": q}
        spec = OptimizeSpec.model_validate(body)
        res = O.visualize(tiny, flat_gray([255], 32), torch.tensor([SOCCER]), spec)[0]
        return [r.steps for r in res.trace]

    assert min(trace(0.5)) < 25  # the tiny model passes 0.5 early: rounds do end early
    assert trace(1.0) == [25] * (2 if augmented else 3)  # 1: every round runs its whole limit


def test_step_limit_and_total_budget(tiny: LoadedModel) -> None:
    spec = short_spec(
        optimizer=OptimizerSettings(q_target=0.999999, max_steps_per_round=3, max_total_steps=10)
    )
    res = O.visualize(tiny, flat_gray([0], 32), torch.tensor([SOCCER]), spec)[0]
    loop_steps = [r.steps for r in res.trace[:-1]]
    assert sum(loop_steps) == 10 and max(loop_steps) <= 3
    assert res.stopped_by == "budget"
    assert res.trace[-1].operation is None  # the final round always runs
    assert res.total_steps == 10 + res.trace[-1].steps


def test_inactive_images_do_not_change(tiny: LoadedModel) -> None:
    x = flat_gray([0, 0], 32)
    cfg = OptimizerSettings()
    O.optimize_round(
        tiny,
        x,
        torch.tensor([SOCCER, SOCCER]),
        torch.tensor([True, False]),
        cfg,
        torch.tensor([5, 5]),
    )
    assert x[0].abs().sum() > 0
    assert x[1].abs().sum() == 0


def test_criterion_ends_the_loop_early(tiny: LoadedModel) -> None:
    spec = short_spec(criterion=StoppingCriterion(kind="mean", threshold=0.0))
    res = O.visualize(tiny, flat_gray([0], 32), torch.tensor([SOCCER]), spec)[0]
    assert res.stopped_by == "criterion"
    assert len(res.trace) == 2  # one schedule round, then the final round


def test_vanilla_is_one_long_round(tiny: LoadedModel) -> None:
    res = O.visualize(
        tiny, flat_gray([0], 32), torch.tensor([SOCCER]), short_spec(method="vanilla")
    )[0]
    assert len(res.trace) == 1 and res.trace[0].operation is None
    assert res.q_final > 0.9


def test_batched_equals_one_by_one(tiny: LoadedModel) -> None:
    levels, targets = [0, 60, 200], [SOCCER, 5, SOCCER]
    spec = short_spec()
    batch = O.visualize(tiny, flat_gray(levels, 32), torch.tensor(targets), spec)
    for g, t, b in zip(levels, targets, batch, strict=True):
        one = O.visualize(tiny, flat_gray([g], 32), torch.tensor([t]), spec)[0]
        assert [r.steps for r in one.trace] == [r.steps for r in b.trace]
        assert torch.equal(one.image, b.image)  # CPU micro-batches of one: the very same bytes
        assert one.q_final == b.q_final


def test_gpu_style_micro_batches_agree_up_to_float_noise(tiny: LoadedModel) -> None:
    levels, targets = [0, 60, 200], [SOCCER, 5, SOCCER]
    spec = short_spec()
    wide = O.Runtime(micro_batch=3)
    batch = O.visualize(tiny, flat_gray(levels, 32), torch.tensor(targets), spec, runtime=wide)
    for g, t, b in zip(levels, targets, batch, strict=True):
        one = O.visualize(tiny, flat_gray([g], 32), torch.tensor([t]), spec)[0]
        assert (one.image - b.image).abs().mean() < 0.5
        assert one.q_final == pytest.approx(b.q_final, abs=0.02)


def test_same_spec_gives_the_same_png_bytes(tiny: LoadedModel) -> None:
    spec = short_spec(seed=3)
    a = O.visualize(tiny, flat_gray([30], 32), torch.tensor([SOCCER]), spec)[0]
    b = O.visualize(tiny, flat_gray([30], 32), torch.tensor([SOCCER]), spec)[0]
    assert encode_png(a.image) == encode_png(b.image)


def test_progress_reports_and_can_cancel(tiny: LoadedModel) -> None:
    seen: list[tuple[int, int, int, float]] = []

    class Stop(Exception):
        pass

    def progress(r: int, n: int, step: int, q: float) -> None:
        seen.append((r, n, step, q))
        if r == 2:
            raise Stop

    with pytest.raises(Stop):
        O.visualize(
            tiny, flat_gray([0], 32), torch.tensor([SOCCER]), short_spec(), progress=progress
        )
    assert seen[0][:3] == (0, 7, 1)
    assert all(0.0 <= q <= 1.0 for *_, q in seen)


def test_output_is_8bit_and_in_range(tiny: LoadedModel) -> None:
    res = O.visualize(tiny, flat_gray([250], 32), torch.tensor([SOCCER]), short_spec())[0]
    assert torch.equal(res.image, res.image.round())
    assert res.image.min() >= 0 and res.image.max() <= 255
    assert set(res.tests) == {f"rot{a}" for a in range(0, 360, 30)} | {"scale0.9", "scale1.1"}


def test_topk_sorted(tiny: LoadedModel) -> None:
    (top,) = O.topk(tiny, flat_gray([0], 32), 5)
    ps = [p for _, _, p in top]
    assert ps == sorted(ps, reverse=True) and len(top) == 5


@pytest.mark.parametrize("clip", [True, False])
def test_adam_in_place_update_equals_the_masked_one(clip: bool) -> None:
    # images that all step are updated in place on views, in reused buffers: exactly the
    # arithmetic of the masked path that copies (the same bytes, not just close), also when only
    # a run of them steps (here images 1 and 2 of 3, then all three)
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 255.0
    grads = [torch.randn(3, 3, 8, 8, generator=g) * 10.0 for _ in range(4)]
    cfg = OptimizerSettings(lr=30.0)
    a, b = x0.clone(), x0.clone()
    fast, slow = O._Adam(a, cfg, clip=clip), O._Adam(b, cfg, clip=clip)
    for k, grad in enumerate(grads):
        if k < 2:
            fast.step(a, slice(1, 3), grad[1:])
            slow.step(b, slice(0, 3), grad, torch.tensor([False, True, True]))
        else:
            fast.step(a, slice(0, 3), grad)
            slow.step(b, slice(0, 3), grad, torch.ones(3, dtype=torch.bool))
        assert torch.equal(a, b)
    assert torch.equal(fast.m, slow.m) and torch.equal(fast.v, slow.v)
    assert torch.equal(fast.t, torch.tensor([2, 4, 4])) and torch.equal(fast.t, slow.t)
    assert not torch.equal(a[0], x0[0])
    assert (float(a.min()) < 0.0 or float(a.max()) > 255.0) != clip  # lr 30: clipping bites


def test_stepping_images_group_into_runs_of_consecutive_indices() -> None:
    assert O._runs([0, 1, 2, 3], [True] * 4) == [(0, 0, 4)]
    assert O._runs([0, 1, 2, 3], [True, False, True, True]) == [(0, 0, 1), (2, 2, 2)]
    assert O._runs([1, 2, 5, 6, 7], [True, True, True, True, False]) == [(0, 1, 2), (2, 5, 2)]
    assert O._runs([4], [False]) == []
