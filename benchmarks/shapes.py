"""What a pass of a new shape costs on a GPU, under each cuDNN setting worth trying.

    python benchmarks/shapes.py [--model efficientnet_lite0] [--out FILE]

On the first H100 runs (``benchmarks/results/engine-h100.json``, ``new_shapes``) a forward+backward
of efficientnet_lite0 at a batch size not met before took about 4 s, and 8 ms the second time:
that, not the arithmetic, is why a batched sweep was slower than one image at a time (its images
leave the batch one by one, so nearly every step met a new shape). Each setting below runs in a
process of its own (cuDNN's caches and switches are per process): the first and second
forward+backward at three new batch sizes, and the steady time per image at batch 32 and 256, so
the choice is between a cheap new shape and a fast steady step:

- ``deterministic``: as the worker runs (``TIVIS_DETERMINISTIC``, the default);
- ``fastest``: PyTorch's default kernels (not deterministic);
- ``cudnn_v8_api_disabled``: ``TORCH_CUDNN_V8_API_DISABLED=1`` (cuDNN's older heuristics, where
  this PyTorch still has them);
- ``cudnn_off``: ``torch.backends.cudnn.enabled = False`` (PyTorch's own convolution kernels);
- ``nchw``: the default kernels with the model and inputs in NCHW order instead of the engine's
  NHWC (channels last), which routes depthwise convolutions elsewhere.

One JSON object with one entry per setting; a setting that fails records its error.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS: dict[str, dict[str, str]] = {  # the most telling first: a stage cut short keeps them
    "deterministic": {"TIVIS_SHAPES_DETERMINISTIC": "1"},
    "cudnn_v8_api_disabled": {"TORCH_CUDNN_V8_API_DISABLED": "1"},
    "cudnn_off": {"TIVIS_SHAPES_CUDNN_OFF": "1"},
    "nchw": {"TIVIS_SHAPES_NCHW": "1"},
    "fastest": {},
}


def measure(model_name: str, device: str) -> dict[str, Any]:
    """In this process: new-shape and steady timings of ``model_name`` on ``device``."""
    import torch

    from worker.engine import determinism
    from worker.engine.models import Registry

    if os.environ.get("TIVIS_SHAPES_DETERMINISTIC"):
        determinism.deterministic(True)
    if os.environ.get("TIVIS_SHAPES_CUDNN_OFF"):
        torch.backends.cudnn.enabled = False
    dev = torch.device(device)
    model = Registry(models_dir=os.environ.get("TIVIS_MODELS_DIR")).load(model_name, dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    nhwc = not os.environ.get("TIVIS_SHAPES_NCHW")
    model.use_channels_last(nhwc)
    layout = torch.channels_last if nhwc else torch.contiguous_format
    size = model.info.input_size

    def step(n: int) -> float:
        x = torch.full((n, 3, size, size), 100.0, device=dev)
        x = x.contiguous(memory_format=layout).requires_grad_(True)
        sync()
        t = time.perf_counter()
        torch.autograd.grad(model(x)[:, 0].sum(), x)
        sync()
        return time.perf_counter() - t

    step(4)  # the context, the model's first pass
    first, again = [], []
    for n in (5, 6, 7):
        first.append(step(n))
        again.append(step(n))
    steady = {}
    for n in (32, 256):
        step(n)
        steady[str(n)] = statistics.median(step(n) for _ in range(5)) / n
    return {
        "new_shape_first_seconds": first,
        "new_shape_again_seconds": again,
        "steady_seconds_per_image": steady,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.enabled else None,  # type: ignore[no-untyped-call]
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--device", default="cuda", help="cuda, or cpu (what CI runs, tiny model)")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per setting")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.device)))
        return
    out: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name, env in SETTINGS.items():
        t = time.monotonic()
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--device", args.device]
        try:
            done = subprocess.run(
                cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                timeout=args.timeout,
            )  # fmt: skip
            if done.returncode == 0:
                out[name] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                out[name] = {"error": done.stderr.strip()[-600:]}
        except subprocess.TimeoutExpired:
            out[name] = {"error": f"no answer in {args.timeout} s"}
        out[name]["seconds"] = round(time.monotonic() - t, 1)
        if args.out is not None:  # after each setting: a stage cut short keeps what it had
            args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
