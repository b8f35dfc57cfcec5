"""glibc's allocator as glibc sets it against ``worker.malloc.tune()``: whole ``invariant+``
visualizations, each setting in a process of its own (a process cannot go back to glibc's
defaults), the two alternating, so the ratio does not depend on how fast the shared machine is
that minute.

    python benchmarks/malloc.py --rounds 5 --out benchmarks/results/malloc-cpu2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(setting: str, classes: list[int], threads: int) -> dict[str, Any]:
    """One process: the model loaded and warmed up, then each class timed."""
    sys.path.insert(0, str(ROOT))
    import torch

    from worker import malloc

    tuned = malloc.tune() if setting == "tuned" else False
    torch.set_num_threads(threads)
    from specs import OptimizeSpec
    from worker.engine import optimize as O
    from worker.engine.images import flat_gray
    from worker.engine.models import Registry

    model = Registry().load("efficientnet_lite0")
    spec = OptimizeSpec(method="invariant+")
    start = flat_gray([0], 224)
    O.visualize(model, start, torch.tensor([1]), spec)  # warm-up
    seconds, faults = [], []
    for c in classes:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        O.visualize(model, start, torch.tensor([c]), spec)
        seconds.append(round(time.perf_counter() - t, 3))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"setting": setting, "tuned": tuned, "seconds": seconds, "minor_faults": faults}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternations")
    p.add_argument("--classes", default="180,353")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", choices=["glibc", "tuned"], help=argparse.SUPPRESS)
    args = p.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, classes, args.threads)))
        return
    load_before = list(os.getloadavg())
    runs: dict[str, list[dict[str, Any]]] = {"glibc": [], "tuned": []}
    for _ in range(args.rounds):
        for setting in runs:
            cmd = [sys.executable, __file__, "--child", setting, "--classes", args.classes,
                   "--threads", str(args.threads)]  # fmt: skip
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            runs[setting].append(res)
            print(setting, res["seconds"], res["minor_faults"], flush=True)
    per_pair = [
        statistics.mean(t["seconds"]) / statistics.mean(g["seconds"])
        for g, t in zip(runs["glibc"], runs["tuned"], strict=True)
    ]
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()),
        },
        "classes": classes,
        "runs": runs,
        "median_seconds": {
            k: statistics.median(s for r in v for s in r["seconds"]) for k, v in runs.items()
        },
        "median_minor_faults_per_class": {
            k: statistics.median(f for r in v for f in r["minor_faults"]) for k, v in runs.items()
        },
        "tuned_over_glibc_per_alternation": [round(r, 3) for r in per_pair],
        "tuned_over_glibc_median": round(statistics.median(per_pair), 3),
    }
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("median_seconds", "tuned_over_glibc_median")}))


if __name__ == "__main__":
    main()
