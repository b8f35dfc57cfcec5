"""The engine on a CUDA GPU (marked ``cuda``; skipped where no CUDA device is present).

Stated tolerances, each checked here (the measured values are also written, as JSON, to the file
named by ``TIVIS_CUDA_FIGURES`` when set, which ``scripts/gpu-check.sh`` collects):

- same spec and seed, same GPU: the paper's method (pixels, no random views) gives the very same
  PNG bytes; ``invariant+`` (its random views go through ``grid_sample``, whose backward adds
  atomically on CUDA, so it is not bit-exact) within a mean of 1 gray level and q_C within 0.02.
- a batched run against one-by-one runs: the same number of steps within 10 %, every image within
  a mean of 3 gray levels, q_C within 0.05 (different batch sizes pick different kernels).
- bfloat16 autocast against float32, both judged in float32 by the quality report (identity and
  16 seeded random views): identity within 0.05, the views' mean within 0.1, q_C above 0.9.
- host-device synchronizations in a round: at most one per step plus one (the round's start),
  counted with ``torch.cuda.set_sync_debug_mode("warn")``.
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
from worker.engine import optimize as O
from worker.engine import transforms as T
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SOCCER = 805
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    path = os.environ.get("TIVIS_CUDA_FIGURES")
    if path and FIGURES:
        FIGURES["gpu"] = torch.cuda.get_device_name(0)
        FIGURES["torch"] = torch.__version__
        Path(path).write_text(json.dumps(FIGURES, indent=2) + "\n")


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return Registry().load("efficientnet_lite0", torch.device("cuda"))


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


def test_same_spec_and_seed_give_the_same_bytes(lite0: LoadedModel) -> None:
    x0, tg = flat_gray([0], 224, device="cuda"), torch.tensor([SOCCER], device="cuda")
    a = O.visualize(lite0, x0, tg, _short(seed=3))[0]
    b = O.visualize(lite0, x0, tg, _short(seed=3))[0]
    assert a.total_steps == b.total_steps
    assert encode_png(a.image) == encode_png(b.image)


def test_invariant_plus_repeats_within_tolerance(lite0: LoadedModel) -> None:
    spec = OptimizeSpec(method="invariant+", seed=5)
    x0, tg = flat_gray([128], 224, device="cuda"), torch.tensor([SOCCER], device="cuda")
    a = O.visualize(lite0, x0, tg, spec)[0]
    b = O.visualize(lite0, x0, tg, spec)[0]
    diff = float((a.image - b.image).abs().mean())
    FIGURES["invariant_plus_repeat"] = {
        "mean_abs_pixel": diff,
        "exact": diff == 0.0,
        "q": [a.q_final, b.q_final],
    }
    assert diff <= 1.0
    assert abs(a.q_final - b.q_final) <= 0.02


def test_batched_matches_one_by_one_within_tolerance(lite0: LoadedModel) -> None:
    levels = [0, 40, 80, 120, 160, 200, 240, 255]
    spec = _short(
        schedule=[Operation(op="rotate", value=10.0, repeat=2)],
        optimizer=OptimizerSettings(max_steps_per_round=20),
    )
    tg = torch.full((len(levels),), SOCCER, device="cuda")
    batch = O.visualize(lite0, flat_gray(levels, 224, device="cuda"), tg, spec)
    rows = []
    for g, b in zip(levels, batch, strict=True):
        one = O.visualize(lite0, flat_gray([g], 224, device="cuda"), tg[:1], spec)[0]
        rows.append(
            {
                "gray": g,
                "mean_abs_pixel": float((one.image - b.image).abs().mean()),
                "steps": [one.total_steps, b.total_steps],
                "q": [one.q_final, b.q_final],
            }
        )
    FIGURES["batched_vs_one_by_one"] = rows
    for r in rows:
        assert r["mean_abs_pixel"] <= 3.0, r
        assert abs(r["q"][0] - r["q"][1]) <= 0.05, r
        s1, s2 = r["steps"]
        assert abs(s1 - s2) <= max(2, 0.1 * s1), r


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


def _count_syncs(fn: Any) -> tuple[int, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), out


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
    count, (n, _, _) = _count_syncs(lambda: round_(*args))
    FIGURES[f"syncs_per_round_{method}"] = {"steps": steps, "syncs": count}
    assert int(n.min()) == steps
    assert count <= steps + 1, f"{count} synchronizations in a round of {steps} steps"


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
