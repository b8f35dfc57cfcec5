"""The model folded (``worker.engine.fold``: BatchNorm and symmetric padding in the convolutions)
against the model as its package builds it: one bare forward+backward of the target logit to the
input, the two nets alternating, at one 224 px image and at the ``invariant+`` preset's pass (4
views of 176 px), median of many alternations; then one default visualization each way,
alternating. Same machine, same run.

    python benchmarks/fold.py --out benchmarks/results/fold-cpu2.json
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
from worker.engine import optimize as O
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel, Registry


def fwd_bwd(model: LoadedModel, x: torch.Tensor, rt: O.Runtime) -> float:
    xr = x.detach().requires_grad_(True)
    t = time.perf_counter()
    torch.autograd.grad(O._forward(model, xr, rt)[:, 805].sum(), xr)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--alternations", type=int, default=15)
    p.add_argument("--visualizations", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="")
    args = p.parse_args()
    reg, rt = Registry(), O.Runtime()
    nets = {
        "folded": reg.load(args.model, fold=True),
        "as_built": reg.load(args.model, fold=False),
    }
    size = nets["folded"].info.input_size
    g = torch.Generator().manual_seed(0)
    shapes = {"1x224": (1, size), "4x176": (4, round(size * 0.786))}
    out: dict[str, Any] = {
        "model": args.model,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "note": args.note,
        "load_average_before": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "forward_backward_seconds": {},
    }
    for label, (n, s) in shapes.items():
        x = torch.rand(n, 3, s, s, generator=g) * 255
        times: dict[str, list[float]] = {k: [] for k in nets}
        for i in range(args.alternations + 1):
            for k, m in nets.items():
                dt = fwd_bwd(m, x, rt)
                if i > 0:  # the first warms up
                    times[k].append(dt)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["forward_backward_seconds"][label] = {
            **{k: round(v, 5) for k, v in med.items()},
            "speedup": round(med["as_built"] / med["folded"], 3),
            "runs": {k: [round(t, 5) for t in v] for k, v in times.items()},
        }
    spec = OptimizeSpec()
    target = torch.tensor([805])
    vis: dict[str, list[float]] = {k: [] for k in nets}
    png: dict[str, Any] = {}
    for _ in range(args.visualizations):
        for k, m in nets.items():
            t = time.perf_counter()
            res = O.visualize(m, flat_gray([127], size), target, spec)[0]
            vis[k].append(time.perf_counter() - t)
            png[k] = {"steps": res.total_steps, "q_final": round(float(res.q_final), 5)}
    medv = {k: statistics.median(v) for k, v in vis.items()}
    out["default_visualization"] = {
        **{
            k: {"seconds": round(medv[k], 3), "runs": [round(t, 3) for t in vis[k]], **png[k]}
            for k in nets
        },
        "speedup": round(medv["as_built"] / medv["folded"], 3),
    }
    out["load_average_after"] = list(os.getloadavg())
    text = json.dumps(out, indent=2) + "\n"
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
