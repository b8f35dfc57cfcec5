"""Adam's update, the engine's two paths side by side (issue 14, CPU overhead over the model).

    python benchmarks/adam.py [--threads 2] [--out FILE]

``in_place``: the CPU path since the fourth session: the images that step are updated in place on
views of the state, in reused buffers (``_Adam.step`` with a slice and no mask, once per run of
consecutive stepping images). ``masked``: the path that copies (gathers the images, builds new
tensors, writes them back under a mask): the GPU path, and what the CPU did for every step before.
Both give the same bytes (``tests/engine/test_optimize.py``). Milliseconds per image and step at
224 px, median of 7 repeats of 10 steps; ``one_done``: one image of the batch has stopped.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specs import OptimizerSettings
from worker.engine import optimize as O


def time_path(batch: int, in_place: bool, one_done: bool) -> float:
    g = torch.Generator().manual_seed(batch)
    x0 = torch.rand(batch, 3, 224, 224, generator=g) * 255.0
    grad = torch.randn(x0.shape, generator=g)
    go = torch.ones(batch, dtype=torch.bool)
    if one_done:
        go[batch // 2] = False
    go_host = go.tolist()
    times = []
    for _ in range(7):
        x = x0.clone()
        adam = O._Adam(x, OptimizerSettings())
        t = time.perf_counter()
        for _ in range(10):
            if in_place:
                for row, start, n in O._runs(list(range(batch)), go_host):
                    adam.step(x, slice(start, start + n), grad[row : row + n])
            else:
                adam.step(x, slice(0, batch), grad, go)
        times.append((time.perf_counter() - t) / 10 / batch)
    return 1000.0 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for batch, one_done in ((1, False), (8, False), (27, False), (27, True)):
        key = f"{batch}" + (" one_done" if one_done else "")
        rows[key] = {
            "in_place_ms": round(time_path(batch, True, one_done), 3),
            "masked_ms": round(time_path(batch, False, one_done), 3),
        }
        print(key, rows[key], flush=True)
    out = {
        "benchmark": "Adam update per image and step, 224 px (benchmarks/adam.py)",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "ms_per_image_step": rows,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
