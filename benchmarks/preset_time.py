"""Wall time of whole visualizations, side by side in one run: the ``invariant+`` preset on the
model as its package builds it (the engine before ``worker.engine.fold``) against presets on the
folded model, alternating class by class, so that the ratio does not depend on how fast the
shared machine is that minute.

    python benchmarks/preset_time.py --classes 94,180,353,589 --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
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
from worker.engine.models import Registry

NINTH: dict[str, Any] = {
    "optimizer": {"max_steps_per_round": 30},
    "augment": {"q_target": 0.999999},
}
"""The ninth session's ``invariant+`` over today's (rounds of up to 30 with the early stop)."""
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "preset_as_built": (NINTH, False),
    "preset_folded": (NINTH, True),
    "rounds26_no_stop_folded": (
        {"optimizer": {"max_steps_per_round": 26}, "augment": {"q_target": 1}},
        True,
    ),
    "rounds22_no_stop_folded": ({}, True),  # the preset now
}
"""``preset`` is the ninth session's preset (the preset when benchmarks/results/
preset-time-cpu2.json was measured); rounds of 22 without early stop is today's."""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", default="94,180,353,589")
    p.add_argument("--out", type=Path)
    p.add_argument("--note", default="")
    args = p.parse_args()
    reg = Registry()
    models = {f: reg.load("efficientnet_lite0", fold=f) for f in (False, True)}
    start = flat_gray([0], 224)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in VARIANTS}
    O.visualize(models[True], start, torch.tensor([1]), OptimizeSpec())  # warm-up
    O.visualize(models[False], start, torch.tensor([1]), OptimizeSpec())
    for c in (int(x) for x in args.classes.split(",")):
        for name, (body, fold) in VARIANTS.items():
            spec = OptimizeSpec.model_validate({"method": "invariant+", **body})
            t = time.perf_counter()
            res = O.visualize(models[fold], start, torch.tensor([c]), spec)[0]
            dt = time.perf_counter() - t
            rows[name].append({"class": c, "seconds": round(dt, 3), "steps": res.total_steps})
            print(name, c, round(dt, 2), res.total_steps, flush=True)
    base = {r["class"]: r["seconds"] for r in rows["preset_as_built"]}
    per_step = {r["class"]: r["seconds"] / r["steps"] for r in rows["preset_as_built"]}
    out: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "note": args.note,
        "load_average_after": list(os.getloadavg()),
        "variants": {k: {"body": VARIANTS[k][0], "folded": VARIANTS[k][1]} for k in VARIANTS},
        "per_class": rows,
        "summary": {
            k: {
                "mean_seconds": round(statistics.mean(r["seconds"] for r in v), 2),
                "mean_steps": round(statistics.mean(r["steps"] for r in v), 1),
                "median_time_ratio_to_preset_as_built": round(
                    statistics.median(r["seconds"] / base[r["class"]] for r in v), 3
                ),
                "median_step_time_ratio_to_preset_as_built": round(
                    statistics.median(r["seconds"] / r["steps"] / per_step[r["class"]] for r in v),
                    3,
                ),
            }
            for k, v in rows.items()
        },
    }
    text = json.dumps(out, indent=2) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    sys.stdout.write(json.dumps(out["summary"], indent=1) + "\n")


if __name__ == "__main__":
    main()
