"""The runtime side of the engine on the CPU: trace tests only where read, passes sized from a
memory budget, cancel and the time limit between the passes of one step (tiny model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from specs import Operation, OptimizeSpec
from worker.engine import optimize as O
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry

SOCCER = 9


@pytest.fixture(scope="module")
def tiny(models_dir: Path) -> LoadedModel:
    return Registry(models_dir=models_dir).load("tiny")


class _Counting:
    """Wraps a model's net and counts the image views that went through it, per pass."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.net = model.net
        self.passes: list[int] = []

    def __enter__(self) -> _Counting:
        net = self.net

        def counted(x: torch.Tensor) -> torch.Tensor:
            self.passes.append(int(x.shape[0]))
            return net(x)  # type: ignore[no-any-return]

        self.model.net = counted  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.net = self.net


def test_lazy_trace_tests_keep_the_image_bytes(tiny: LoadedModel) -> None:
    """Evaluating the transformation tests every 9th round instead of every round changes no
    image byte, no step count and no final table; the trace has them where they were run."""
    spec = OptimizeSpec.model_validate(
        {"schedule": [{"op": "rotate", "value": 10.0, "repeat": 20}]}
    )
    x0, tg = flat_gray([0, 250], 32), torch.tensor([SOCCER, SOCCER])
    every = O.visualize(tiny, x0, tg, spec, test_every=1)
    lazy = O.visualize(tiny, x0, tg, spec)
    for a, b in zip(every, lazy, strict=True):
        assert encode_png(a.image) == encode_png(b.image)
        assert a.total_steps == b.total_steps and a.tests == b.tests
        assert [r.steps for r in a.trace] == [r.steps for r in b.trace]
        loop = b.trace[:-1]
        tested = [r.round for r in loop if r.test_min is not None]
        assert tested == [8, 17, 19]  # every 9th round and the last round of the loop
        for ra, rb in zip(a.trace, b.trace, strict=True):
            if rb.test_min is not None:
                assert (ra.test_min, ra.test_mean) == (rb.test_min, rb.test_mean)


def test_a_criterion_still_tests_every_round(tiny: LoadedModel) -> None:
    spec = OptimizeSpec.model_validate(
        {
            "schedule": [{"op": "rotate", "value": 10.0, "repeat": 5}],
            "criterion": {"kind": "min", "threshold": 1.0},
        }
    )
    res = O.visualize(tiny, flat_gray([0], 32), torch.tensor([SOCCER]), spec)[0]
    assert all(r.test_min is not None for r in res.trace[:-1])


def test_views_per_pass_follow_the_memory_budget(tiny: LoadedModel) -> None:
    per = O.sample_bytes(tiny, 32, O.Runtime(), grad=True)
    assert per > 0
    budget_mb = max(1, (5 * per) // 2**20 + 1)
    rt = O.Runtime(pass_memory_mb=budget_mb)
    cap = rt.budget_bytes(tiny.device) // per
    plan = O.plan_passes(tiny, rt, 32, 3, 64, grad=True)
    assert plan.images == 1  # the CPU: one image per pass, for exact bytes
    assert plan.views == min(64, cap)
    assert O.plan_passes(tiny, O.Runtime(), 32, 3, 4, grad=True) == O.PassPlan(1, 4)


def _views_spec(views: int) -> OptimizeSpec:
    return OptimizeSpec.model_validate(
        {
            "method": "invariant+",
            "schedule": [{"op": "rotate", "value": 90.0, "repeat": 1}],
            "optimizer": {"max_steps_per_round": 3},
            "augment": {"views": views, "view_scale": 1.0},  # views of the image's size
        }
    )


def test_split_views_give_the_same_steps_up_to_float_noise(tiny: LoadedModel) -> None:
    spec = _views_spec(8)
    x0, tg = flat_gray([128], 32), torch.tensor([SOCCER])
    whole = O.visualize(tiny, x0, tg, spec)[0]
    with _Counting(tiny) as c:
        split = O.visualize(tiny, x0, tg, spec, runtime=O.Runtime(pass_memory_mb=1, micro_batch=1))[
            0
        ]
    plan = O.plan_passes(tiny, O.Runtime(pass_memory_mb=1), 32, 1, 8, grad=True)
    if plan.views < 8:
        assert max(c.passes) <= plan.views
    assert (whole.image - split.image).abs().max() <= 2.0
    assert whole.total_steps == split.total_steps


def test_cancel_stops_inside_a_step_of_many_views(tiny: LoadedModel) -> None:
    """A step whose views take several passes can be stopped between them: the progress
    callback runs between passes (with the steps done so far) and may raise."""
    spec = _views_spec(32)
    rt = O.Runtime(micro_batch=1, pass_memory_mb=1)
    plan = O.plan_passes(tiny, rt, 32, 1, 32, grad=True)
    if plan.views >= 32:  # the budget is 1 MiB at least
        pytest.skip("32 views of the tiny model fit in 1 MiB")

    class Stop(Exception):
        pass

    calls: list[int] = []

    def progress(r: int, n: int, step: int, q: float) -> None:
        calls.append(step)
        raise Stop

    with _Counting(tiny) as c, pytest.raises(Stop):
        O.sample_bytes(tiny, 32, rt, grad=True)  # the pass plan's measurement, not counted
        c.passes.clear()
        O.visualize(
            tiny, flat_gray([128], 32), torch.tensor([SOCCER]), spec, runtime=rt, progress=progress
        )
    assert calls == [0]  # raised during the first step, before it finished
    assert len(c.passes) == 1 < -(-32 // plan.views)


def test_a_param_round_split_into_passes_checks_cancel_between_them(tiny: LoadedModel) -> None:
    """The same with an explicit plan of 4 views per pass (independent of the measured bytes)."""
    from worker.engine import augment as A
    from worker.engine import param as P

    spec = _views_spec(32)
    param = P.make_param(spec.param, flat_gray([128], 32))
    gens = [A.generator(1)]

    class Stop(Exception):
        pass

    seen: list[int] = []

    def on_pass(step: int, q: float) -> None:
        seen.append(step)
        if len(seen) == 3:
            raise Stop

    with _Counting(tiny) as c, pytest.raises(Stop):
        O.param_round(
            tiny,
            param,
            torch.tensor([SOCCER]),
            torch.tensor([True]),
            spec.optimizer,
            torch.tensor([5]),
            lr=spec.param.lr,
            augment=spec.augment,
            gens=gens,
            on_pass=on_pass,
            plan=O.PassPlan(1, 4),
        )
    assert seen == [0, 0, 0]  # all inside the first step
    assert c.passes == [4, 4, 4]  # stopped after 3 of its 8 passes


def test_the_deadline_stops_between_passes(tiny: LoadedModel) -> None:
    rt = O.Runtime(deadline=time.monotonic() - 1.0)
    with pytest.raises(O.TimeLimitExceeded):
        O.visualize(tiny, flat_gray([0], 32), torch.tensor([SOCCER]), OptimizeSpec(), runtime=rt)


def test_schedule_rounds_unchanged_by_the_pass_plan(tiny: LoadedModel) -> None:
    """Several images, a plan of 2 images per pass (GPU style) against the CPU's one: the steps
    taken agree and the images agree up to float noise."""
    spec = OptimizeSpec(schedule=[Operation(op="rotate", value=10.0, repeat=3)])
    x0, tg = flat_gray([0, 60, 200], 32), torch.tensor([SOCCER, 5, SOCCER])
    one = O.visualize(tiny, x0, tg, spec)
    two = O.visualize(tiny, x0, tg, spec, runtime=O.Runtime(micro_batch=2))
    for a, b in zip(one, two, strict=True):
        assert (a.image - b.image).abs().mean() < 0.5
