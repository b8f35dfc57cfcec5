"""The BatchNorm prior's cost: its distance as one autograd node with the gradient written out
(``bnprior._LayerDistance``, the engine's) against the same formula left to autograd (a dozen
small operations per layer, the engine before), alternating in one run.

Two figures, each alternating between the two implementations so that the ratio does not depend
on how fast the shared machine is that minute:

- one ``invariant+`` step's forward+backward (4 views of 176 px with the prior's hooks, lite0
  folded), medians over ``--reps`` alternations;
- whole ``invariant+`` visualizations of a few classes (the same bytes up to float rounding).

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
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specs import OptimizeSpec
from worker.engine import bnprior as BP
from worker.engine import optimize as O
from worker.engine.images import flat_gray
from worker.engine.models import Registry

FUSED = BP.layer_distance


IMPLS = {"autograd": BP.autograd_distance, "fused": FUSED}


def step_seconds(model: Any, x: torch.Tensor) -> float:
    """One forward+backward of ``x`` with the prior collected, as the engine's step makes it."""
    t = time.perf_counter()
    sub = x.detach().requires_grad_(True)
    with BP.collect(model.net, True) as prior:
        logits = model.net((sub - 127.0) / 128.0)
        obj = logits[:, 1] - 0.001 * prior.take(x.shape[0], x.device)
        torch.autograd.grad(obj.sum(), sub)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--classes", default="94,180,353,589")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = Registry().load("efficientnet_lite0")
    x = torch.rand(4, 3, 176, 176, generator=torch.Generator().manual_seed(0)) * 255
    x = x.contiguous(memory_format=torch.channels_last)
    load_before = list(os.getloadavg())
    steps: dict[str, list[float]] = {k: [] for k in IMPLS}
    for fn in IMPLS.values():  # warm-up
        BP.layer_distance = fn
        step_seconds(model, x)
    for _ in range(args.reps):
        for name, fn in IMPLS.items():
            BP.layer_distance = fn
            steps[name].append(step_seconds(model, x))
    start = flat_gray([0], 224)
    spec = OptimizeSpec(method="invariant+")
    whole: dict[str, list[dict[str, Any]]] = {k: [] for k in IMPLS}
    for c in (int(v) for v in args.classes.split(",")):
        for name, fn in IMPLS.items():
            BP.layer_distance = fn
            t = time.perf_counter()
            res = O.visualize(model, start, torch.tensor([c]), spec)[0]
            dt = time.perf_counter() - t
            whole[name].append({"class": c, "seconds": round(dt, 3), "steps": res.total_steps})
            print(name, c, round(dt, 2), res.total_steps, flush=True)
    BP.layer_distance = FUSED
    med = {k: statistics.median(v) for k, v in steps.items()}
    out: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "step_4x176": {
            "reps": args.reps,
            "median_seconds": {k: round(v, 4) for k, v in med.items()},
            "fused_over_autograd": round(med["fused"] / med["autograd"], 3),
        },
        "visualizations": {
            "per_class": whole,
            "median_time_ratio_fused_over_autograd": round(
                statistics.median(
                    f["seconds"] / a["seconds"]
                    for f, a in zip(whole["fused"], whole["autograd"], strict=True)
                ),
                3,
            ),
        },
    }
    text = json.dumps(out, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(json.dumps({k: out[k] for k in ("step_4x176",)}, indent=1) + "\n")
    sys.stdout.write(
        f"visualizations: {out['visualizations']['median_time_ratio_fused_over_autograd']}\n"
    )


if __name__ == "__main__":
    main()
