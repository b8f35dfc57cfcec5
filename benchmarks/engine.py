"""Engine benchmark: writes one JSON object with the figures of issues 2 and 14.

    python benchmarks/engine.py [--model efficientnet_lite0] [--device auto] [--out FILE]
        [--batches 1,32,256] [--steps 3] [--repeats 3] [--sweep-levels 0,10,...]
        [--sweep-rounds 2] [--classes 100] [--compile | --no-compile] [--amp] [--skip sweep,...]

- ``step_seconds_per_image``: one optimization step (forward + backward + Adam + clip) per image
  at each batch size (default 1/32/256 on CUDA, 1/8/27 on the CPU), next to the bare model
  forward+backward of the same images in the same passes, and their ratio (aim: <= 1.05).
- ``sweep``: the entropy sweep (27 levels, a shortened schedule recorded in the output) as one
  batch versus one by one, the speed-up and whether the images agree; on CUDA both again, once
  every pass shape has been met (``*_again_seconds``: a worker that has run jobs).
- ``default_visualization``: the wall time of one default visualization (soccer ball), its steps.
- ``invariant_plus_classes``: ``invariant+`` over N classes in one job, as classes per minute.
- ``invariant_plus_long_classes``: the same with ``LONG`` (rounds of 60 steps that never end
  early: the recipe that takes the judge past 0.9 in ``benchmarks/quality.py``, 3.5 times the
  work), so a GPU run says what that quality costs there. Run last (float32 only), after the
  other figures are written.
- ``compiled`` (CUDA, ``--compile``): step time at the largest batch with ``torch.compile``.
- ``amp`` (``--amp``): the same figures run under bfloat16 autocast.
- ``step_seconds_per_image_without_lookahead`` (CUDA): the steps with the host reading each
  step's decisions at once (``Runtime.lookahead`` off), beside the default.
- ``--compare`` (CUDA): what a new pass shape costs (``new_shapes``), the sweep without padding
  passes to buckets, and the steps without deterministic kernels, beside the figures above.

On CUDA everything runs with deterministic kernels, as the worker does (``--no-deterministic``:
PyTorch's fastest), and passes padded to buckets (``models.bucket``).

Every timed figure carries ``peak_gpu_mib`` on CUDA. Timings are medians of repeated runs after a
warm-up; machine, load average, torch version and thread count are recorded, so figures from
different (or shared) machines are never mixed up.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specs import DEFAULT_GRAY_LEVELS, Operation, OptimizerSettings, OptimizeSpec
from worker import malloc
from worker.engine import determinism
from worker.engine import optimize as O
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel, Registry


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def bare_step(
    model: LoadedModel, x: torch.Tensor, targets: torch.Tensor, chunk: int, rt: O.Runtime
) -> None:
    """The floor: forward and backward of the target logit in the engine's passes."""
    for xs, ts in zip(torch.split(x, chunk), torch.split(targets, chunk), strict=True):
        xr = xs.detach().requires_grad_(True)
        logits = O._forward(model, xr, rt).float()
        (grad,) = torch.autograd.grad(logits.gather(1, ts[:, None]).sum(), xr)
        del grad


def time_steps(
    model: LoadedModel, batch: int, steps: int, repeats: int, rt: O.Runtime
) -> dict[str, Any]:
    dev = model.device
    size = model.info.input_size
    targets = torch.full((batch,), 805 % model.info.num_classes, device=dev)
    cfg = OptimizerSettings(q_target=0.999999, max_steps_per_round=steps)
    limit = torch.full((batch,), steps, device=dev)
    everyone = torch.ones(batch, dtype=torch.bool, device=dev)
    chunk = O.plan_passes(model, rt, size, batch, 1, grad=True).images
    engine, bare = [], []
    _peak_start(dev)

    def run_engine() -> float:
        x = flat_gray([255] * batch, size, device=dev)  # far from any target: no early stop
        _sync(dev)
        t = time.perf_counter()
        n, _, _ = O.optimize_round(model, x, targets, everyone, cfg, limit, runtime=rt)
        _sync(dev)
        if int(n.min()) != steps:
            raise RuntimeError(f"expected {steps} steps per image, got {n.tolist()}")
        return time.perf_counter() - t

    def run_bare() -> float:
        # optimize_round makes steps+1 forwards (the last one only reads q_C) and steps backwards
        x = flat_gray([255] * batch, size, device=dev)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(steps):
            bare_step(model, x, targets, chunk, rt)
        with torch.no_grad():
            for xs in torch.split(x, chunk):
                O._forward(model, xs, rt)
        _sync(dev)
        return time.perf_counter() - t

    for rep in range(repeats + 1):
        # each goes first every other time, so neither gets the better minute of the machine
        if rep % 2:
            dt_bare, dt_engine = run_bare(), run_engine()
        else:
            dt_engine, dt_bare = run_engine(), run_bare()
        if rep > 0:  # the first run warms up
            engine.append(dt_engine / (steps * batch))
            bare.append(dt_bare / (steps * batch))
    e, b = statistics.median(engine), statistics.median(bare)
    return {
        "engine": e,
        "bare_forward_backward": b,
        "ratio": e / b,
        # each engine run over the bare run beside it: the machine's slower minutes cancel
        "ratio_paired": statistics.median(x / y for x, y in zip(engine, bare, strict=True)),
        "images_per_pass": chunk,
        "peak_gpu_mib": _peak_mib(dev),
    }


def _timed(dev: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(dev)
    t = time.perf_counter()
    out = fn()
    _sync(dev)
    return time.perf_counter() - t, out


def time_sweep(
    model: LoadedModel, levels: list[int], rounds: int, rt: O.Runtime
) -> dict[str, object]:
    dev = model.device
    size = model.info.input_size
    spec = OptimizeSpec(
        schedule=[Operation(op="rotate", value=10.0, repeat=rounds)],
        optimizer=OptimizerSettings(max_steps_per_round=20),
    )
    target = 805 % model.info.num_classes
    tg = torch.full((len(levels),), target, device=dev)

    def batched() -> list[O.VisResult]:
        return O.visualize(model, flat_gray(levels, size, device=dev), tg, spec, runtime=rt)

    def single() -> list[O.VisResult]:
        return [
            O.visualize(model, flat_gray([g], size, device=dev), tg[:1], spec, runtime=rt)[0]
            for g in levels
        ]

    _peak_start(dev)
    t_batched, res_b = _timed(dev, batched)
    peak_b = _peak_mib(dev)
    _peak_start(dev)
    t_single, res_s = _timed(dev, single)
    peak_s = _peak_mib(dev)
    diffs = [float((a.image - b.image).abs().max()) for a, b in zip(res_b, res_s, strict=True)]
    mean_diffs = [
        float((a.image - b.image).abs().mean()) for a, b in zip(res_b, res_s, strict=True)
    ]
    warm: dict[str, float] = {}
    if dev.type == "cuda":  # again, every pass shape met once: a worker that has run jobs
        warm["batched_again_seconds"], _ = _timed(dev, batched)
        warm["one_by_one_again_seconds"], _ = _timed(dev, single)
        warm["speedup_again"] = warm["one_by_one_again_seconds"] / warm["batched_again_seconds"]
    return {
        "levels": len(levels),
        "schedule": f"rotate 10° × {rounds}, max 20 steps per round",
        "batched_seconds": t_batched,
        "one_by_one_seconds": t_single,
        "speedup": t_single / t_batched,
        **warm,
        "batched_equals_one_by_one": max(diffs) == 0.0,
        "max_pixel_difference": max(diffs),
        "mean_pixel_difference": statistics.mean(mean_diffs),
        "total_steps": sum(r.total_steps for r in res_b),
        "peak_gpu_mib": {"batched": peak_b, "one_by_one": peak_s},
    }


def time_default(model: LoadedModel, rt: O.Runtime, repeats: int) -> dict[str, Any]:
    dev = model.device
    target = torch.tensor([805 % model.info.num_classes], device=dev)
    x0 = flat_gray([0], model.info.input_size, device=dev)
    times, res = [], None
    _peak_start(dev)
    for _ in range(repeats):
        dt, out = _timed(dev, lambda: O.visualize(model, x0, target, OptimizeSpec(), runtime=rt))
        times.append(dt)
        res = out[0]
    assert res is not None
    return {
        "seconds": statistics.median(times),
        "runs": times,
        "steps": res.total_steps,
        "q_final": res.q_final,
        "test_min": min(res.tests.values()),
        "peak_gpu_mib": _peak_mib(dev),
    }


LONG: dict[str, Any] = {"optimizer": {"max_steps_per_round": 60}, "augment": {"q_target": 1.0}}
"""The request body over ``invariant+`` that the README calls "long" (issue 12's eighth pass)."""


def time_classes(
    model: LoadedModel, n: int, rt: O.Runtime, over: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``invariant+`` (with the request body ``over`` merged in) over ``n`` classes (spread over
    the label set) in one job."""
    dev = model.device
    k = model.info.num_classes
    classes = [(i * k) // n for i in range(n)]
    spec = OptimizeSpec.model_validate({"method": "invariant+", **(over or {})})
    x0 = flat_gray([128] * n, model.info.input_size, device=dev)
    tg = torch.tensor(classes, device=dev)
    _peak_start(dev)
    first, res = _timed(dev, lambda: O.visualize(model, x0, tg, spec, runtime=rt))
    dt = first
    if dev.type == "cuda":  # again, every pass shape met once: what a worker that ran jobs does
        dt, res = _timed(dev, lambda: O.visualize(model, x0, tg, spec, runtime=rt))
    qs = [r.q_final for r in res]
    return {
        "classes": n,
        "seconds": dt,
        "first_run_seconds": first,
        "classes_per_minute": 60.0 * n / dt,
        "q_final_median": statistics.median(qs),
        "q_final_min": min(qs),
        "steps_mean": statistics.mean(r.total_steps for r in res),
        "peak_gpu_mib": _peak_mib(dev),
    }


def _fwd_bwd(model: LoadedModel, x: torch.Tensor) -> Any:
    return torch.autograd.grad(model(x)[:, 0].sum(), x)


def time_new_shapes(model: LoadedModel, sizes: list[int]) -> dict[str, Any]:
    """A forward+backward at batch sizes not met before, then the same again: what a new shape
    costs (cuDNN prepares its kernels for each), and why passes are padded to buckets."""
    dev, size = model.device, model.info.input_size
    first: list[float] = []
    again: list[float] = []
    for n in sizes:
        x = torch.full((n, 3, size, size), 100.0, device=dev, requires_grad=True)
        for out in (first, again):
            dt, _ = _timed(dev, functools.partial(_fwd_bwd, model, x))
            out.append(dt)
    return {"batch_sizes": sizes, "first_seconds": first, "again_seconds": again}


def run_all(model: LoadedModel, args: argparse.Namespace, rt: O.Runtime) -> dict[str, Any]:
    batches = [int(b) for b in args.batches.split(",")]
    levels = [int(v) for v in args.sweep_levels.split(",")] if args.sweep_levels else None
    out: dict[str, Any] = {}
    if "steps" not in args.skip:
        out["step_seconds_per_image"] = {
            str(b): time_steps(model, b, args.steps, args.repeats, rt) for b in batches
        }
    if "sweep" not in args.skip:
        levels = levels or list(DEFAULT_GRAY_LEVELS)
        out["sweep"] = time_sweep(model, levels, args.sweep_rounds, rt)
    if "default" not in args.skip:
        out["default_visualization"] = time_default(model, rt, args.repeats)
    if "classes" not in args.skip:
        out["invariant_plus_classes"] = time_classes(model, args.classes, rt)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--device", default="auto")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,32,256 / 1,8,27)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep-levels", help="comma-separated gray levels (default: the 27)")
    p.add_argument("--sweep-rounds", type=int, default=2)
    p.add_argument("--classes", type=int, help="invariant+ classes in one job (100 / 5)")
    p.add_argument("--compile", dest="compile", action="store_true", default=None)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--amp", action="store_true", help="also run everything under bfloat16")
    p.add_argument(
        "--no-deterministic", dest="deterministic", action="store_false",
        help="CUDA: leave PyTorch's fastest kernels (the worker's default is deterministic)",
    )  # fmt: skip
    p.add_argument(
        "--compare", action="store_true",
        help="CUDA: also the sweep without padded passes and the steps without determinism",
    )  # fmt: skip
    p.add_argument(
        "--no-fold", dest="fold", action="store_false", help="keep BatchNorm as its own layers"
    )
    p.add_argument("--out", type=Path, help="write the JSON here too")
    p.add_argument("--note", default="", help="free text recorded in the output")
    p.add_argument(
        "--skip", help="comma-separated figures to leave out: steps,sweep,default,classes,long"
    )
    p.add_argument(
        "--glibc-malloc", action="store_true", help="leave glibc's allocator as it is (a worker "
        "tunes it: worker.malloc, TIVIS_TUNE_MALLOC)",
    )  # fmt: skip
    args = p.parse_args()
    malloc_tuned = False if args.glibc_malloc else malloc.tune()
    args.skip = set(args.skip.split(",")) if args.skip else set()
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cuda = dev.type == "cuda"
    args.batches = args.batches or ("1,32,256" if cuda else "1,8,27")
    args.classes = args.classes or (100 if cuda else 5)
    if cuda and args.deterministic:  # as the worker runs (TIVIS_DETERMINISTIC)
        determinism.deterministic(True)
    model = Registry(models_dir=os.environ.get("TIVIS_MODELS_DIR")).load(
        args.model, dev, fold=args.fold
    )
    rt = O.Runtime()
    t0 = time.monotonic()
    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "model": args.model,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if cuda else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "malloc_tuned": malloc_tuned,
        "image_size": model.info.input_size,
        "batchnorm_folded": args.fold,
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "pass_budget_mib": round(rt.budget_bytes(dev) / 2**20),
        "sample_mib_with_backward": round(
            O.sample_bytes(model, model.info.input_size, rt, grad=True) / 2**20, 2
        ),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "buckets": "on a GPU (models.bucket)",
        "note": args.note,
        "load_average_before": list(load_before),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.update(run_all(model, args, rt))

    def save() -> str:
        text = json.dumps(out, indent=2) + "\n"
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        return text

    if cuda and "steps" not in args.skip:  # the host reading each step at once, beside
        at_once = O.Runtime(lookahead=False)
        out["step_seconds_per_image_without_lookahead"] = {
            b: time_steps(model, int(b), args.steps, args.repeats, at_once)
            for b in args.batches.split(",")
        }
    save()  # the main figures are kept even if compiling below runs out of time
    if cuda and args.compare:
        out["new_shapes"] = time_new_shapes(model, [5, 6, 7])
        levels = [int(v) for v in args.sweep_levels.split(",")] if args.sweep_levels else None
        plain = O.Runtime(buckets=False)
        out["sweep_without_buckets"] = time_sweep(
            model, levels or list(DEFAULT_GRAY_LEVELS), args.sweep_rounds, plain
        )
        determinism.deterministic(False)
        out["step_seconds_per_image_not_deterministic"] = {
            b: time_steps(model, int(b), args.steps, args.repeats, rt)
            for b in args.batches.split(",")
        }
        determinism.deterministic(args.deterministic)
        save()
    if cuda and args.compile:
        big = max(int(b) for b in args.batches.split(","))
        crt = O.Runtime(compile=True)
        t = time.perf_counter()
        time_steps(model, big, 1, 1, crt)  # compiles (and warms up)
        compile_s = time.perf_counter() - t
        out["compiled"] = {
            "compile_seconds": compile_s,
            "step_seconds_per_image": {
                str(big): time_steps(model, big, args.steps, args.repeats, crt)
            },
        }
    if args.amp:
        art = O.Runtime(amp=True)
        out["amp"] = run_all(model, args, art)
    if "long" not in args.skip:  # last: the longest, after the rest is saved
        save()
        out["invariant_plus_long_classes"] = time_classes(model, args.classes, rt, LONG)
    out["load_average_after"] = list(os.getloadavg())
    out["seconds"] = time.monotonic() - t0
    sys.stdout.write(save())


if __name__ == "__main__":
    main()
