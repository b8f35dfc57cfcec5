"""The host's cost of making a step's random views: a shift per view (the CPU's way) against one
sampling of all of them (the GPU's way, ``augment._jitter_and_crop``).

    python benchmarks/views.py [--images 100] [--size 8] [--repeats 15] [--out FILE]

On a GPU every operation the host issues is a kernel launch; at 100 images of 4 views the
per-view shifts were a few hundred of them per step, forward and backward. Measured here on the
CPU with tiny images (8 px by default), so the time is the host's own (Python, dispatch, autograd
nodes), not arithmetic: the part that would keep a GPU waiting. The draws (``augment.draw``, one
generator per image) are timed too, since both ways need them. Medians of alternating repeats.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specs import OptimizeSpec
from worker.engine import augment as A


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(2)
    aug = OptimizeSpec(method="invariant+").augment
    size = round(args.size * aug.view_scale)
    gens = [A.generator(i) for i in range(args.images)]
    x = (torch.rand(args.images, 3, args.size, args.size) * 255).requires_grad_(True)
    times: dict[str, list[float]] = {"draw": [], "per_view": [], "one_sampling": []}

    def timed(fn: Any) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for rep in range(args.repeats + 1):
        t = time.perf_counter()
        draws = [A.draw(g, aug) for g in gens]
        dt_draw = time.perf_counter() - t

        order = [
            ("per_view", lambda d=draws: torch.autograd.grad(A.apply(x, d).sum(), x)),
            (
                "one_sampling",
                lambda d=draws: torch.autograd.grad(A._jitter_and_crop(x, d, size).sum(), x),
            ),
        ]
        for name, fn in order if rep % 2 else order[::-1]:
            dt = timed(fn)
            if rep:
                times[name].append(dt)
        if rep:
            times["draw"].append(dt_draw)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "images": args.images,
        "views_per_image": aug.views,
        "size": args.size,
        "seconds_per_step_median": med,
        "per_view_over_one_sampling": med["per_view"] / med["one_sampling"],
        "repeats": args.repeats,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
        },
    }
    text = json.dumps(out, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
