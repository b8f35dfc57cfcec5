"""What makes CUDA runs repeatable, checked on the CPU (``test_cuda.py`` checks it on a GPU):
the gather sampler against ``grid_sample``, the global pool against ``AdaptiveAvgPool2d``, the
padded passes (``models.bucket``) against unpadded ones, and the process-wide switch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from specs import OptimizerSettings, OptimizeSpec, StepAugment
from worker.engine import augment as A
from worker.engine import determinism as D
from worker.engine import optimize as O
from worker.engine import param as P
from worker.engine import transforms as T
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel, bucket


def _grid(n: int, out: int) -> torch.Tensor:
    angles = torch.tensor([0.0, 33.0, -71.0, 180.0, 12.5])[:n]
    scales = torch.tensor([1.0, 1.3, 0.7, 1.0, 2.2])[:n]
    theta = T.affine_theta(angles, scales).clone()
    theta[:, :, 2] = torch.tensor([[0.0, 0.0], [0.2, -0.1], [-0.5, 0.3], [0.0, 0.0], [0.9, 0.9]])[
        :n
    ]
    return F.affine_grid(theta, [n, 3, out, out], align_corners=False)


def _same_values_and_gradients(
    got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, g: torch.Generator
) -> None:
    """``got`` equals ``ref`` to 1e-9, and so does the gradient of a random weighting of it
    with respect to ``x`` (float64 throughout)."""
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    w = torch.rand(ref.shape, generator=g, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    torch.testing.assert_close(g_got, g_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("out", [9, 16, 23])
def test_bilinear_gather_equals_grid_sample(out: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(5, 3, 16, 16, generator=g, dtype=torch.float64) * 255).requires_grad_(True)
    grid = _grid(5, out).double()
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = D.sample_bilinear(x, grid)
    _same_values_and_gradients(got, ref, x, g)


def test_bilinear_gather_hand_made() -> None:
    """A 2×2 image shifted by half a pixel: every output pixel is a mean of known neighbours."""
    x = torch.tensor([[[[0.0, 100.0], [200.0, 40.0]]]])
    theta = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])  # half the width: one pixel right
    grid = F.affine_grid(theta, [1, 1, 2, 2], align_corners=False)
    got = D.sample_bilinear(x, grid)
    # output x=0 samples input x=0.5 (between the columns), x=1 samples x=1.5 (half outside)
    assert got.tolist() == [[[[50.0, 50.0], [120.0, 20.0]]]]


def test_grid_sample_dispatch_stays_on_grid_sample_on_the_cpu() -> None:
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    grid = _grid(2, 8)
    D.deterministic(True)
    try:
        assert torch.equal(D.grid_sample(x, grid), F.grid_sample(x, grid, align_corners=False))
    finally:
        D.deterministic(False)


def test_global_pool_equals_adaptive_pool() -> None:
    x = torch.rand(2, 5, 7, 7, dtype=torch.float64)
    for size in [1, (1, 1), (7, 7), (3, 3), (None, 7)]:
        ref = nn.AdaptiveAvgPool2d(size)(x)  # type: ignore[arg-type]
        torch.testing.assert_close(D.GlobalPool(size)(x), ref, rtol=1e-12, atol=1e-12)


def test_replace_adaptive_pools_keeps_the_function() -> None:
    net = resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
    assert D.replace_adaptive_pools(net) == 1
    assert isinstance(net.avgpool, D.GlobalPool)
    assert not any(type(m) is nn.AdaptiveAvgPool2d for m in net.modules())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)


def test_deterministic_switch() -> None:
    D.deterministic(True)
    try:
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import torch.utils.deterministic as det

        assert not det.fill_uninitialized_memory  # type: ignore[attr-defined]
    finally:
        D.deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_cpu_gradients_repeat_for_small_images(lite: LoadedModel) -> None:
    """One small image per pass (views split over passes): MKL's small products gave other
    input gradients from run to run on a 2-core AVX-512 VM until ``MKL_CBWR`` was set."""
    import os

    assert os.environ.get("MKL_CBWR")
    x = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(3)) * 255
    grads = []
    for _ in range(8):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(O._forward(lite, xx, O.Runtime())[:, 805].sum(), xx)
        grads.append(g)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_bucket_sizes() -> None:
    sizes = [bucket(n) for n in range(1, 200)]
    assert all(s >= n for n, s in zip(range(1, 200), sizes, strict=True))
    assert sorted(set(sizes)) == [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]
    assert max((s - n) / s for n, s in zip(range(1, 200), sizes, strict=True)) == 3 / 8
    assert bucket(400) == 512 and bucket(384) == 384 and bucket(385) == 512


def test_padded_classify_gives_the_unpadded_probabilities(lite: LoadedModel) -> None:
    from worker.engine.classify import predict

    x = torch.rand(5, 3, 96, 96) * 255
    plain = predict(lite, x, chunk=3, buckets=False)  # 3 and 2
    padded = predict(lite, x, chunk=3, buckets=True)  # 3 -> 4, 2
    assert padded.shape == plain.shape == (5, lite.info.num_classes)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-6)


def test_padded_pass_gives_the_unpadded_logits(lite: LoadedModel) -> None:
    x = torch.rand(3, 3, 96, 96) * 255  # 3 rows: padded to 4
    plain = O._forward(lite, x, O.Runtime(buckets=False))
    padded = O._forward(lite, x, O.Runtime(buckets=True))
    assert padded.shape == plain.shape == (3, lite.info.num_classes)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-4)


def test_padded_passes_give_the_same_steps_with_every_option(lite: LoadedModel) -> None:
    """3 views per step (padded to 4), BatchNorm prior and stochastic depth on: the padding rows
    change nothing the optimizer sees."""
    spec = OptimizeSpec(method="invariant+")
    aug = spec.augment.model_copy(update={"views": 3})
    assert isinstance(aug, StepAugment)
    cfg = spec.optimizer.model_copy(update={"max_steps_per_round": 2})
    assert isinstance(cfg, OptimizerSettings) and cfg.bn_prior > 0 and cfg.stochastic_depth > 0

    def run(buckets: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = flat_gray([128], 224)
        gens = [A.generator(7)]
        param = P.make_param(spec.param, x0, gens)
        tg = torch.tensor([805])
        steps, _qb, qa = O.param_round(
            lite, param, tg, torch.ones(1, dtype=torch.bool), cfg, torch.tensor([2]),
            lr=spec.param.lr, augment=aug, gens=gens, runtime=O.Runtime(buckets=buckets),
        )  # fmt: skip
        assert int(steps[0]) == 2
        return param.images(), qa

    img_a, q_a = run(False)
    img_b, q_b = run(True)
    torch.testing.assert_close(q_b, q_a, rtol=1e-4, atol=1e-5)
    assert float((img_a - img_b).abs().mean()) < 0.05


@pytest.mark.parametrize(
    ("method", "pass_mb"), [("invariant", 0), ("invariant+", 0), ("invariant+", 1)]
)
def test_lookahead_gives_the_same_bytes(lite: LoadedModel, method: str, pass_mb: int) -> None:
    """Reading a step's decisions a step late (the GPU's way) changes nothing: the images that
    stopped take a masked pass and give back its random draws (views, stochastic depth); also
    with an image's views split over several passes (``pass_mb`` 1)."""
    from specs import Operation

    body: dict[str, object] = {
        "method": method,
        "schedule": [Operation(op="rotate", value=15.0, repeat=2)],
        "tests": {"rotations": [0, 30], "scales": [1.2]},
    }
    optimizer = {"max_steps_per_round": 6, "q_target": 0.05}
    if method == "invariant+":
        body["augment"] = {"q_target": 0.05}  # early stops at different steps per image
    body["optimizer"] = optimizer
    spec = OptimizeSpec.model_validate(
        {**OptimizeSpec(method=method).model_dump(exclude_unset=True), **body}  # type: ignore[arg-type]
    )
    x0 = flat_gray([0, 128, 255], 64)
    tg = torch.tensor([805, 1, 954])
    rt_on = O.Runtime(lookahead=True, pass_memory_mb=pass_mb)
    rt_off = O.Runtime(lookahead=False, pass_memory_mb=pass_mb)
    if pass_mb:
        assert O.plan_passes(lite, rt_on, 50, 3, 4, grad=True).views < 4
    on = O.visualize(lite, x0, tg, spec, runtime=rt_on, transparency=True)
    off = O.visualize(lite, x0, tg, spec, runtime=rt_off, transparency=True)
    steps = [[r.steps for r in res.trace] for res in off]
    assert len({s for per in steps for s in per}) > 1  # the images stop at different steps
    for a, b in zip(on, off, strict=True):
        assert torch.equal(a.image, b.image)
        assert a.total_steps == b.total_steps and a.q_final == b.q_final
        assert [r.as_dict() for r in a.trace] == [r.as_dict() for r in b.trace]
        assert a.transparency is not None and b.transparency is not None
        assert torch.equal(a.transparency, b.transparency)


def test_lookahead_takes_no_extra_pass_at_the_step_limit(lite: LoadedModel) -> None:
    """A round that ends at its step limit: as many passes a step late as at once (the host
    counts the steps it read, and the pass queued since judged the last one)."""
    O.sample_bytes(lite, 64, O.Runtime(), grad=True)  # its probing pass, before counting
    passes: dict[bool, int] = {}
    outs: dict[bool, tuple[torch.Tensor, ...]] = {}
    for ahead in (False, True):
        count = 0

        def hook(*_: object) -> None:
            nonlocal count
            count += 1

        handle = lite.net.register_forward_hook(hook)  # type: ignore[attr-defined]
        try:
            x = flat_gray([0, 128, 255], 64)
            got = O.optimize_round(
                lite, x, torch.tensor([805, 1, 954]), torch.ones(3, dtype=torch.bool),
                OptimizerSettings(q_target=0.999999), torch.tensor([4, 2, 4]),
                runtime=O.Runtime(lookahead=ahead),
            )  # fmt: skip
            outs[ahead] = (x, *got)
        finally:
            handle.remove()
        passes[ahead] = count
    assert passes[True] == passes[False]
    assert outs[True][1].tolist() == [4, 2, 4]  # each image's own limit
    for a, b in zip(outs[True], outs[False], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("translate", [1.0, 0.0])
def test_jitter_and_crop_in_one_sampling_equals_apply(translate: float) -> None:
    """The GPU's views (jitter, rotation, zoom and crop in one gather sampling) against the
    CPU's (a shift per view, then ``grid_sample``): the same values and input gradients."""
    cfg = StepAugment(
        views=5, jitter=6, max_rotation=180.0, scale_min=0.7, scale_max=1.5,
        translate=translate, view_scale=0.75,
    )  # fmt: skip
    gens = [A.generator(s) for s in (1, 2, 3)]
    draws = [A.draw(g, cfg) for g in gens]
    assert draws[0].shifts.abs().max() > 0
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(3, 3, 20, 20, generator=g, dtype=torch.float64) * 255).requires_grad_(True)
    ref = A.apply(x, draws)
    got = A._jitter_and_crop(x, draws, 15)
    assert got.shape == ref.shape == (15, 3, 15, 15)
    _same_values_and_gradients(got, ref, x, g)


def test_pass_plans_count_their_padding() -> None:
    # 100 images of 4 views, room for 400 views: 400 would be padded to 512, so 96 images (384)
    assert O.fit_plan(100, 4, 400, pad=False) == O.PassPlan(100, 4)
    assert O.fit_plan(100, 4, 400, pad=True) == O.PassPlan(96, 4)
    # room for 5 views: 5 would be padded to 8, so 4 views per pass; one image per pass
    assert O.fit_plan(3, 6, 5, pad=True) == O.PassPlan(1, 4)
    assert O.fit_plan(3, 6, 5, pad=False) == O.PassPlan(1, 5)
    for images, views, cap in [(27, 1, 27), (7, 3, 20), (1, 16, 9), (50, 14, 200)]:
        plan = O.fit_plan(images, views, cap, pad=True)
        assert bucket(plan.images * plan.views) <= cap or plan.images * plan.views == 1


def test_padded_passes_keep_their_size_as_images_stop(lite: LoadedModel) -> None:
    """Images that stop leave padding behind rather than a new pass shape, until the pass is a
    ``SHRINK``-th full; the steps and pictures are those of unpadded passes."""
    O.sample_bytes(lite, 32, O.Runtime(), grad=True)  # its probing pass, before counting
    limits = torch.tensor([1, 2, 3, 4, 8])  # 5 images leave the batch one by one
    seen: dict[bool | None, list[int]] = {}
    outs: dict[bool | None, tuple[torch.Tensor, ...]] = {}
    for pads in (None, True, False):  # None: each pass to its own bucket (the rule before)
        sizes: list[int] = []

        def hook(_m: object, inp: tuple[torch.Tensor, ...], sizes: list[int] = sizes) -> None:
            sizes.append(int(inp[0].shape[0]))

        handle = lite.net.register_forward_pre_hook(hook)  # type: ignore[attr-defined]
        shrink = O.SHRINK
        try:
            if pads is None:
                O.SHRINK = 1  # every pass shrinks to its own bucket
            x = flat_gray([0, 64, 128, 192, 255], 32)
            got = O.optimize_round(
                lite, x, torch.tensor([805, 1, 954, 2, 3]), torch.ones(5, dtype=torch.bool),
                OptimizerSettings(q_target=0.999999), limits,
                runtime=O.Runtime(buckets=pads is not False, micro_batch=5),  # one pass
            )  # fmt: skip
            outs[pads] = (x, *got)
        finally:
            O.SHRINK = shrink
            handle.remove()
        seen[pads] = sizes
    assert seen[False] == [5, 5, 4, 3, 2, 1, 1, 1, 1]  # unpadded: the images still running
    assert seen[None] == [8, 8, 4, 4, 2, 1, 1, 1, 1]  # each pass to its bucket: four shapes
    assert seen[True] == [8, 8, 8, 8, 8, 1, 1, 1, 1]  # kept until 1 row of 5 (<= a quarter)
    for pads in (None, True):
        assert outs[pads][1].tolist() == limits.tolist()
        x, ref = outs[pads][0], outs[False][0]
        assert float((x - ref).abs().mean()) < 0.05
        torch.testing.assert_close(outs[pads][3], outs[False][3], rtol=1e-4, atol=1e-5)
