"""The engine on a CUDA GPU (marked ``cuda``; skipped where no CUDA device is present).

Stated tolerances, each checked here with deterministic kernels on, as the worker runs on a GPU
(``TIVIS_DETERMINISTIC``, ``worker.engine.determinism``); the measured values are also written,
as JSON, to the file named by ``TIVIS_CUDA_FIGURES`` when set, which ``scripts/gpu-check.sh``
collects:

- same spec and seed, same GPU: the very same PNG bytes, for the paper's method and for
  ``invariant+`` (random views, Fourier image, BatchNorm prior); no op warns that it has no
  deterministic kernel.
- a batched run against one-by-one runs (different batch sizes pick different kernels, so the
  sums differ in their last bits): the first step's gradient within 1e-3 of its largest value;
  whole runs, where Adam's sign-like first steps and early stops amplify those bits into other
  pictures, q_C within 0.05.
- bfloat16 autocast against float32, both judged in float32 by the quality report (identity and
  16 seeded random views): identity within 0.05, the views' mean within 0.1, q_C above 0.9.
- host-device synchronizations in a round: at most one per step, one at the round's start and
  one for the check after the last step, counted with ``torch.cuda.set_sync_debug_mode("warn")``
  (the host reads each step's decisions a step late, ``Runtime.lookahead``, from a pinned copy);
  where they come from is recorded.

Measured on an H100 (``benchmarks/results/cuda-h100.json``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from specs import Operation, OptimizerSettings, OptimizeSpec, RandomViews
from worker.engine import determinism
from worker.engine import optimize as O
from worker.engine import transforms as T
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SOCCER = 805
ROOT = str(Path(__file__).resolve().parents[2])
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    path = os.environ.get("TIVIS_CUDA_FIGURES")
    if path and FIGURES:
        FIGURES["gpu"] = torch.cuda.get_device_name(0)
        FIGURES["torch"] = torch.__version__
        Path(path).write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    determinism.deterministic(True)
    yield
    determinism.deterministic(False)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return Registry().load("efficientnet_lite0", torch.device("cuda"))


def _nondeterministic_warnings(fn: Any) -> tuple[list[str], Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return sorted({str(w.message)[:160] for w in caught if "determinis" in str(w.message)}), out


def _short(**kw: Any) -> OptimizeSpec:
    base: dict[str, Any] = {"schedule": [Operation(op="rotate", value=10.0, repeat=4)]}
    base.update(kw)
    return OptimizeSpec.model_validate(base)


def _quality(model: LoadedModel, images: torch.Tensor, target: int) -> dict[str, float]:
    """The quality report's figures, always in float32."""
    tg = torch.full((images.shape[0],), target, device=images.device)
    angles, scales = T.random_views(RandomViews())
    ident = O.target_probs(model, images, tg)
    views = O.view_probs(model, images, tg, angles, scales)
    return {
        "identity": float(ident[0]),
        "views_mean": float(views[0].mean()),
        "views_min": float(views[0].min()),
    }


def test_device_is_used(lite0: LoadedModel) -> None:
    assert next(lite0.net.parameters()).is_cuda  # type: ignore[attr-defined]
    rt = O.Runtime()
    plan = O.plan_passes(lite0, rt, 224, 256, 2, grad=True)
    FIGURES["plan_256_images_2_views"] = {
        "images": plan.images,
        "views": plan.views,
        "sample_mib": O.sample_bytes(lite0, 224, rt, grad=True) / 2**20,
    }
    assert plan.images >= 32  # an H100 holds far more than 32 images of 2 views per pass


def test_adaptive_pool_replaced_on_the_gpu(lite0: LoadedModel) -> None:
    mods = list(lite0.net.modules())  # type: ignore[attr-defined]
    assert not any(type(m) is torch.nn.AdaptiveAvgPool2d for m in mods)
    assert any(isinstance(m, determinism.GlobalPool) for m in mods)


def test_bilinear_gather_matches_grid_sample_on_the_gpu() -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 3, 40, 40, generator=g) * 255).cuda().requires_grad_(True)
    theta = T.affine_theta(torch.tensor([0.0, 33.0, -71.0]), torch.tensor([1.0, 1.3, 0.8]))
    grid = torch.nn.functional.affine_grid(theta.cuda(), [3, 3, 32, 32], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    got = determinism.sample_bilinear(x, grid)
    w = torch.rand(ref.shape, generator=g).cuda()
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    (g_got,) = torch.autograd.grad((got * w).sum(), x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-3)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["invariant", "invariant+"])
def test_same_spec_and_seed_give_the_same_bytes(lite0: LoadedModel, method: str) -> None:
    if method == "invariant":
        x0, spec = flat_gray([0], 224, device="cuda"), _short(seed=3)
    else:
        x0, spec = flat_gray([128], 224, device="cuda"), OptimizeSpec(method="invariant+", seed=5)
    tg = torch.tensor([SOCCER], device="cuda")
    warned, a = _nondeterministic_warnings(lambda: O.visualize(lite0, x0, tg, spec)[0])
    b = O.visualize(lite0, x0, tg, spec)[0]
    diff = float((a.image - b.image).abs().mean())
    FIGURES[f"repeat_{method}"] = {
        "mean_abs_pixel": diff,
        "exact": encode_png(a.image) == encode_png(b.image),
        "steps": [a.total_steps, b.total_steps],
        "q": [a.q_final, b.q_final],
        "nondeterministic_ops": warned,
    }
    assert not warned
    assert a.total_steps == b.total_steps
    assert encode_png(a.image) == encode_png(b.image)


def _batched_vs_one_by_one(
    lite0: LoadedModel, levels: list[int], spec: OptimizeSpec
) -> list[dict[str, Any]]:
    tg = torch.full((len(levels),), SOCCER, device="cuda")
    batch = O.visualize(lite0, flat_gray(levels, 224, device="cuda"), tg, spec)
    rows = []
    for g, b in zip(levels, batch, strict=True):
        one = O.visualize(lite0, flat_gray([g], 224, device="cuda"), tg[:1], spec)[0]
        rows.append(
            {
                "gray": g,
                "mean_abs_pixel": float((one.image - b.image).abs().mean()),
                "max_abs_pixel": float((one.image - b.image).abs().max()),
                "steps": [one.total_steps, b.total_steps],
                "q": [one.q_final, b.q_final],
            }
        )
    return rows


def test_batched_matches_one_by_one_within_tolerance(lite0: LoadedModel) -> None:
    levels = [0, 40, 80, 120, 160, 200, 240, 255]
    tg = torch.full((len(levels),), SOCCER, device="cuda")
    # the gradient of the first step: the different kernels of different batch sizes alone
    x = flat_gray(levels, 224, device="cuda").requires_grad_(True)
    (g_batch,) = torch.autograd.grad(_log_p(lite0, x, tg).sum(), x)
    rel = []
    for i, g in enumerate(levels):
        xi = flat_gray([g], 224, device="cuda").requires_grad_(True)
        (g_one,) = torch.autograd.grad(_log_p(lite0, xi, tg[:1]).sum(), xi)
        rel.append(float((g_batch[i] - g_one[0]).abs().max() / g_one.abs().max()))
    # whole runs: Adam's first steps move every pixel by the step size whatever the gradient's
    # size, so a last-bit difference flips the sign of near-zero gradients, and early stops
    # amplify it; the images differ (a mean of 7-13 gray levels on an H100), their q_C do not
    whole = _batched_vs_one_by_one(
        lite0,
        levels,
        _short(
            schedule=[Operation(op="rotate", value=10.0, repeat=2)],
            optimizer=OptimizerSettings(max_steps_per_round=20),
        ),
    )
    FIGURES["batched_vs_one_by_one"] = {"first_gradient_max_rel": rel, "whole_runs": whole}
    assert max(rel) <= 1e-3, rel
    for r in whole:
        assert abs(r["q"][0] - r["q"][1]) <= 0.05, r


def _log_p(model: LoadedModel, x: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
    logits = O._forward(model, x, O.Runtime())
    return logits.log_softmax(dim=1).gather(1, tg[:, None])[:, 0]


@pytest.mark.parametrize("method", ["invariant", "invariant+"])
def test_bfloat16_keeps_the_quality_report(lite0: LoadedModel, method: str) -> None:
    gray = 0 if method == "invariant" else 128
    spec = OptimizeSpec(method=method)  # type: ignore[arg-type]
    x0, tg = flat_gray([gray], 224, device="cuda"), torch.tensor([SOCCER], device="cuda")
    f32 = O.visualize(lite0, x0, tg, spec)[0]
    bf16 = O.visualize(lite0, x0, tg, spec, runtime=O.Runtime(amp=True))[0]
    q32 = _quality(lite0, f32.image[None], SOCCER)
    q16 = _quality(lite0, bf16.image[None], SOCCER)
    FIGURES[f"bfloat16_{method}"] = {
        "float32": q32,
        "bfloat16": q16,
        "steps": [f32.total_steps, bf16.total_steps],
    }
    assert q16["identity"] > 0.9
    assert abs(q16["identity"] - q32["identity"]) <= 0.05
    assert abs(q16["views_mean"] - q32["views_mean"]) <= 0.1


def _count_syncs(fn: Any) -> tuple[int, dict[str, int], Any]:
    """How many synchronizing calls the engine made while ``fn`` ran, and from which lines (a
    call from outside ``worker/``, such as the test's own, is not counted)."""
    import traceback

    where: dict[str, int] = {}
    shown = warnings.showwarning

    def record(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(ROOT)]
        if not frames or "/worker/" not in frames[-1].filename:  # not from the engine
            return
        f = frames[-1] if frames else None
        key = f"{Path(f.filename).name}:{f.lineno} {f.line}" if f else f"{filename}:{lineno}"
        where[key] = where.get(key, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown
    return sum(where.values()), where, out


@pytest.mark.parametrize("method", ["invariant", "invariant+"])
def test_one_host_device_sync_per_step(lite0: LoadedModel, method: str) -> None:
    from worker.engine import augment as A
    from worker.engine import param as P

    spec = OptimizeSpec(method=method)  # type: ignore[arg-type]
    steps, b = 6, 4
    cfg = OptimizerSettings(q_target=0.999999, max_steps_per_round=steps)
    aug = spec.augment if spec.augment.enabled else None
    lr = spec.param.lr if spec.param.kind != "pixel" else cfg.lr

    def inputs() -> tuple[Any, ...]:  # made before counting: copies to the device wait
        param = P.make_param(spec.param, flat_gray([128] * b, 224, device="cuda"))
        tg = torch.full((b,), SOCCER, device="cuda")
        active = torch.ones(b, dtype=torch.bool, device="cuda")
        limit = torch.full((b,), steps, device="cuda")
        torch.cuda.synchronize()
        return param, tg, active, limit, [A.generator(i) for i in range(b)]

    def round_(param: Any, tg: Any, active: Any, limit: Any, gens: Any) -> Any:
        return O.param_round(lite0, param, tg, active, cfg, limit, lr=lr, augment=aug, gens=gens)

    round_(*inputs())  # warm-up: kernels, the pass plan's measurement
    args = inputs()
    count, where, (n, _, _) = _count_syncs(lambda: round_(*args))
    FIGURES[f"syncs_per_round_{method}"] = {"steps": steps, "syncs": count, "where": where}
    assert int(n.min()) == steps
    assert count <= steps + 2, f"{count} synchronizations in a round of {steps} steps: {where}"


def test_micro_batches_from_free_memory_fit(lite0: LoadedModel) -> None:
    """A pass plan from the free memory runs without running out of it, and uses the device."""
    n = 64
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    spec = OptimizeSpec(method="invariant+", optimizer=OptimizerSettings(max_steps_per_round=2))
    x0 = flat_gray([128] * n, 224, device="cuda")
    tg = torch.arange(n, device="cuda") * 7
    res = O.visualize(lite0, x0, tg, spec)
    peak = torch.cuda.max_memory_allocated() / 2**20
    FIGURES["invariant_plus_64_classes_peak_mib"] = peak
    assert len(res) == n
    _free, total = torch.cuda.mem_get_info()
    assert peak * 2**20 < total
