"""The BatchNorm prior's cost: the engine's (each layer's μ and E[y²] as one autograd node with
its gradient written out, the distances of all layers of a pass in a dozen operations on their
statistics laid end to end: ``bnprior.collect``) against the per-layer formula left to autograd
(``bnprior.autograd_distance`` in each layer's hook: a dozen small operations per layer, the
engine of the tenth session) and against no prior at all, alternating in one run.

Two figures, each alternating between the variants so that the ratios do not depend on how fast
the shared machine is that minute:

- one ``invariant+`` step's forward+backward (4 views of 176 px, lite0 folded), medians over
  ``--reps`` alternations: none / autograd / engine;
- whole ``invariant+`` visualizations of a few classes, seconds per step, with the prior (the
  preset) and without it (``bn_prior`` 0): the prior's share of a visualization.

    python benchmarks/bnprior.py --out benchmarks/results/bnprior-cpu2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specs import OptimizeSpec
from worker import malloc
from worker.engine import bnprior as BP
from worker.engine import optimize as O
from worker.engine.fold import FoldedBatchNorm
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel, Registry

WEIGHT = 0.001  # the preset's


class PerLayerAutograd:
    """Hooks that sum ``autograd_distance`` layer by layer, as the engine did before."""

    def __init__(self, net: nn.Module) -> None:
        self.sum: torch.Tensor | None = None
        self.on = False
        for m in BP.bn_layers(net):
            m.register_forward_pre_hook(self._hook)

    def _hook(self, m: nn.Module, inp: tuple[Any, ...]) -> None:
        if not self.on:
            return
        mean, var, scale, shift = BP.layer_stats(cast(nn.BatchNorm2d | FoldedBatchNorm, m))
        affine = (scale, shift) if scale is not None and shift is not None else None
        d = BP.autograd_distance(inp[0], mean, var, affine)
        self.sum = d if self.sum is None else self.sum + d


def step_seconds(model: LoadedModel, x: torch.Tensor, how: str, ref: PerLayerAutograd) -> float:
    """One forward+backward of ``x`` with the target logit and, but for ``none``, the prior."""
    t = time.perf_counter()
    sub = x.detach().requires_grad_(True)
    with BP.collect(model.net, how == "engine") as prior:
        ref.on = how == "autograd"
        logits = model.net((sub - 127.0) / 128.0)
        ref.on = False
        obj = logits[:, 1]
        if how == "engine":
            obj = obj - WEIGHT * prior.take(x.shape[0], x.device)
        elif how == "autograd":
            obj, ref.sum = obj - WEIGHT * cast(torch.Tensor, ref.sum), None
        torch.autograd.grad(obj.sum(), sub)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--classes", default="94,180,353,589,805,963")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    malloc.tune()  # as in a worker
    torch.set_num_threads(args.threads)
    model = Registry().load("efficientnet_lite0")
    ref = PerLayerAutograd(model.net)
    x = torch.rand(4, 3, 176, 176, generator=torch.Generator().manual_seed(0)) * 255
    x = x.contiguous(memory_format=torch.channels_last)
    load_before = list(os.getloadavg())
    hows = ("none", "autograd", "engine")
    steps: dict[str, list[float]] = {k: [] for k in hows}
    for how in hows:  # warm-up
        step_seconds(model, x, how, ref)
    for r in range(args.reps):
        for how in hows if r % 2 == 0 else hows[::-1]:
            steps[how].append(step_seconds(model, x, how, ref))
    start = flat_gray([0], 224)
    specs = {
        "prior": OptimizeSpec(method="invariant+"),
        "none": OptimizeSpec.model_validate({"method": "invariant+", "optimizer": {"bn_prior": 0}}),
    }
    O.visualize(model, start, torch.tensor([1]), specs["prior"])  # warm-up
    whole: dict[str, list[dict[str, Any]]] = {k: [] for k in specs}
    for i, c in enumerate(int(v) for v in args.classes.split(",")):
        for name in specs if i % 2 == 0 else list(specs)[::-1]:
            t = time.perf_counter()
            res = O.visualize(model, start, torch.tensor([c]), specs[name])[0]
            dt = time.perf_counter() - t
            whole[name].append(
                {"class": c, "seconds": round(dt, 3), "steps": res.total_steps,
                 "seconds_per_step": round(dt / res.total_steps, 4)}
            )  # fmt: skip
            print(name, c, round(dt, 2), res.total_steps, flush=True)
    med = {k: statistics.median(v) for k, v in steps.items()}
    per_step = {k: statistics.median(r["seconds_per_step"] for r in v) for k, v in whole.items()}
    out: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "malloc_tuned": True,
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "step_4x176": {
            "reps": args.reps,
            "median_seconds": {k: round(v, 4) for k, v in med.items()},
            "engine_over_autograd": round(med["engine"] / med["autograd"], 3),
            "prior_seconds": {
                "autograd": round(med["autograd"] - med["none"], 4),
                "engine": round(med["engine"] - med["none"], 4),
            },
        },
        "visualizations": {
            "per_class": whole,
            "median_seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
            "prior_share_of_a_step": round(1 - per_step["none"] / per_step["prior"], 3),
        },
    }
    text = json.dumps(out, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(json.dumps(out["step_4x176"], indent=1) + "\n")
    sys.stdout.write(json.dumps(out["visualizations"]["median_seconds_per_step"]) + "\n")


if __name__ == "__main__":
    main()
