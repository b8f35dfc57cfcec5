"""Engine benchmark: prints one JSON object with the figures of issue 2.

    python benchmarks/engine.py [--model efficientnet_lite0] [--device auto] [--quick]

- ``step_seconds_per_image``: one optimization step (forward + backward + Adam + clip) per image,
  for batch sizes 1, 8 and 27, next to the bare model forward+backward for the same batches and
  their ratio (aim: <= 1.05).
- ``sweep``: the 27-level entropy sweep (a shortened schedule, recorded in the output) as one
  batch versus one by one, and the speed-up.
- ``default_visualization_seconds``: the wall time of one default visualization (soccer ball).

Timings are medians of repeated runs after a warm-up; the machine, torch version and thread count
are in the output so figures from different machines are never mixed up.
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

from specs import DEFAULT_GRAY_LEVELS, Operation, OptimizerSettings, OptimizeSpec
from worker.engine import optimize as O
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel, Registry


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, chunk: int) -> None:
    """The floor: forward and backward of the target logit in the engine's micro-batches."""
    for xs, ts in zip(torch.split(x, chunk), torch.split(targets, chunk), strict=True):
        xr = xs.detach().requires_grad_(True)
        logits = model(xr)
        (grad,) = torch.autograd.grad(logits.gather(1, ts[:, None]).sum(), xr)
        del grad


def time_steps(model: LoadedModel, batch: int, steps: int, repeats: int) -> dict[str, float]:
    dev = model.device
    size = model.info.input_size
    targets = torch.full((batch,), 805 % model.info.num_classes, device=dev)
    cfg = OptimizerSettings(q_target=0.999999, max_steps_per_round=steps)
    limit = torch.full((batch,), steps, device=dev)
    everyone = torch.ones(batch, dtype=torch.bool, device=dev)
    engine, bare = [], []
    for rep in range(repeats + 1):
        x = flat_gray([255] * batch, size, device=dev)  # far from any target: no early stop
        _sync(dev)
        t = time.perf_counter()
        n, _, _ = O.optimize_round(model, x, targets, everyone, cfg, limit)
        _sync(dev)
        dt_engine = time.perf_counter() - t
        if int(n.min()) != steps:
            raise RuntimeError(f"expected {steps} steps per image, got {n.tolist()}")
        # optimize_round makes steps+1 forwards (the last one only reads q_C) and steps backwards
        t = time.perf_counter()
        chunk = O.Runtime().chunk(dev)
        for _ in range(steps):
            bare_step(model, x, targets, chunk)
        with torch.no_grad():
            for xs in torch.split(x, chunk):
                model(xs)
        _sync(dev)
        dt_bare = time.perf_counter() - t
        if rep > 0:  # the first run warms up
            engine.append(dt_engine / (steps * batch))
            bare.append(dt_bare / (steps * batch))
    e, b = statistics.median(engine), statistics.median(bare)
    return {"engine": e, "bare_forward_backward": b, "ratio": e / b}


def time_sweep(model: LoadedModel, rounds: int) -> dict[str, object]:
    dev = model.device
    size = model.info.input_size
    levels = list(DEFAULT_GRAY_LEVELS)
    spec = OptimizeSpec(
        schedule=[Operation(op="rotate", value=10.0, repeat=rounds)],
        optimizer=OptimizerSettings(max_steps_per_round=20),
    )
    target = 805 % model.info.num_classes
    tg = torch.full((len(levels),), target, device=dev)
    _sync(dev)
    t = time.perf_counter()
    batched = O.visualize(model, flat_gray(levels, size, device=dev), tg, spec)
    _sync(dev)
    t_batched = time.perf_counter() - t
    t = time.perf_counter()
    single = [O.visualize(model, flat_gray([g], size, device=dev), tg[:1], spec)[0] for g in levels]
    _sync(dev)
    t_single = time.perf_counter() - t
    same = all(
        float((a.image - b.image).abs().max()) <= 1.0 for a, b in zip(batched, single, strict=True)
    )
    return {
        "levels": len(levels),
        "schedule": f"rotate 10° × {rounds}, max 20 steps per round",
        "batched_seconds": t_batched,
        "one_by_one_seconds": t_single,
        "speedup": t_single / t_batched,
        "batched_equals_one_by_one": same,
        "total_steps": sum(r.total_steps for r in batched),
    }


def time_default(model: LoadedModel) -> dict[str, float]:
    dev = model.device
    target = torch.tensor([805 % model.info.num_classes], device=dev)
    _sync(dev)
    t = time.perf_counter()
    res = O.visualize(
        model, flat_gray([0], model.info.input_size, device=dev), target, OptimizeSpec()
    )[0]
    _sync(dev)
    return {"seconds": time.perf_counter() - t, "steps": res.total_steps, "q_final": res.q_final}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep-rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="batch sizes 1 and 8 only, 1 repeat")
    args = p.parse_args()
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    model = Registry(models_dir=os.environ.get("TIVIS_MODELS_DIR")).load(args.model, dev)
    batches = [1, 8] if args.quick else [1, 8, 27]
    repeats = 1 if args.quick else args.repeats
    out: dict[str, object] = {
        "model": args.model,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_size": model.info.input_size,
        "steps_timed": args.steps,
        "micro_batch": O.Runtime().chunk(dev),
        "step_seconds_per_image": {
            str(b): time_steps(model, b, args.steps, repeats) for b in batches
        },
    }
    out["sweep"] = time_sweep(model, args.sweep_rounds)
    out["default_visualization"] = time_default(model)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
