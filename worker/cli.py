"""Command line: run the engine on this machine and write PNGs and a JSON report.

    python -m worker.cli visualize --model efficientnet_lite0 --target "soccer ball" --out out/
    python -m worker.cli sweep --model efficientnet_lite0 --target "soccer ball" --out out/
    python -m worker.cli classify --image cat.png --image out/grid.png --top-k 5 --out out/
    python -m worker.cli screen --image ball.jpg --rect 120,80,200,180 --model resnet50
    python -m worker.cli compare --model efficientnet_lite0 --model efficientnet_lite1 \
        --target "soccer ball" --target daisy --out cmp/

Every option of the job specs can be given as JSON with ``--spec '{...}'`` (the same body the
HTTP API takes); the flags below override the common ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from specs import SweepSpec, VisualizeSpec, target_from_text

Progress = Callable[[int, int, int, float], None]


class ProgressBar:
    """A one-line progress bar on stderr: round, step, q_C, elapsed time."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, rnd: int, rounds: int, step: int, q: float) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and step > 1:
            return
        self.last = now
        filled = int(self.width * rnd / max(rounds, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] round {rnd + 1}/{rounds} step {step:4d} q={q:.3f} {now - self.start:6.1f}s"
        )
        self.stream.flush()

    def done(self) -> None:
        self.stream.write(f"\rdone in {time.monotonic() - self.start:.1f}s" + " " * 60 + "\n")


_target = target_from_text


def _spec_dict(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(args.spec) if args.spec else {}
    for key in ("model", "method", "initial_gray", "seed", "size"):
        value = getattr(args, key, None)
        if value is not None:
            body[key] = value
    return body


def _registry() -> Any:
    from worker.engine.models import Registry

    return Registry(
        models_dir=os.environ.get("TIVIS_MODELS_DIR"),
        weights_dir=os.environ.get("TIVIS_WEIGHTS_DIR"),
        store_dir=os.environ.get("TIVIS_MODEL_STORE_DIR"),
    )


def _write(out_dir: Path, output: Any) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for art in output.artifacts:
        (out_dir / art.name).write_bytes(art.data)
    (out_dir / "result.json").write_text(json.dumps(output.result, indent=2))
    names = ", ".join(a.name for a in output.artifacts[:6])
    more = f" and {len(output.artifacts) - 6} more" if len(output.artifacts) > 6 else ""
    print(f"wrote {names}{more}, result.json to {out_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.cli", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model name (default efficientnet_lite0)")
        p.add_argument("--method", help="invariant (default), vanilla or invariant+")
        p.add_argument("--initial-gray", dest="initial_gray", type=int)
        p.add_argument("--size", type=int, help="image side in pixels (default: the model's)")
        p.add_argument("--seed", type=int)
        p.add_argument("--spec", help="the whole job spec as JSON (as in the HTTP API)")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
        p.add_argument("--out", type=Path, default=Path("out"), help="output folder")

    vis = sub.add_parser("visualize", help="transformation-invariant visualization of targets")
    common(vis)
    vis.add_argument("--target", action="append", help="class name or index (repeatable)")
    sw = sub.add_parser("sweep", help="entropy sweep over initial gray levels")
    common(sw)
    sw.add_argument("--target", help="class name or index")
    sw.add_argument("--levels", help="comma-separated gray levels (default 0,10,...,250,255)")
    cmp = sub.add_parser("compare", help="models × targets grid and the cross-model matrix")
    cmp.add_argument("--model", action="append", help="model name (repeatable, 2 to 4)")
    cmp.add_argument("--target", action="append", help="class name or index (repeatable)")
    cmp.add_argument("--method", help="invariant (default), vanilla or invariant+")
    cmp.add_argument("--seed", type=int)
    cmp.add_argument("--spec", help="the whole job spec as JSON (as in the HTTP API)")
    cmp.add_argument("--device", default="auto", help="auto, cpu or cuda")
    cmp.add_argument("--out", type=Path, default=Path("out"), help="output folder")
    for name, what in (
        ("classify", "top-k of images under one or more models, as a labelled panel"),
        ("screen", "fill rectangles with each model's zero; top-k before and after"),
    ):
        dbg = sub.add_parser(name, help=what)
        dbg.add_argument("--image", action="append", type=Path, help="PNG, JPEG or WebP file")
        dbg.add_argument("--model", action="append", help="model name (repeatable)")
        dbg.add_argument("--top-k", dest="top_k", type=int, help="predictions per model (5)")
        dbg.add_argument("--spec", help="the whole job spec as JSON (as in the HTTP API)")
        dbg.add_argument("--device", default="auto", help="auto, cpu or cuda")
        dbg.add_argument("--out", type=Path, default=Path("out"), help="output folder")
        if name == "screen":
            dbg.add_argument(
                "--rect", action="append", help="x,y,width,height in image pixels (repeatable)"
            )
    args = parser.parse_args(argv)
    from core.settings import get_settings
    from worker import malloc

    settings = get_settings()
    if settings.tune_malloc:  # as a worker process does
        malloc.tune()
    from worker.jobs.base import use_determinism

    use_determinism(settings.deterministic, getattr(args, "device", "auto"))  # as a worker does
    if args.command in ("classify", "screen"):
        return _classify_or_screen(parser, args)

    from worker.engine.optimize import Runtime
    from worker.jobs import RUNNERS, JobContext

    if args.command == "compare":
        return _compare(parser, args)
    body = _spec_dict(args)
    try:
        if args.command == "visualize":
            if args.target:
                body["targets"] = [_target(t) for t in args.target]
            spec: VisualizeSpec | SweepSpec = VisualizeSpec.model_validate(body)
        else:
            if args.target:
                body["target"] = _target(args.target)
            if args.levels:
                body["gray_levels"] = [int(v) for v in args.levels.split(",")]
            spec = SweepSpec.model_validate(body)
    except ValidationError as exc:
        parser.error(str(exc))
    bar = ProgressBar()
    runtime = Runtime(amp=args.amp)
    try:
        ctx = JobContext(_registry(), device=args.device, runtime=runtime, progress=bar)
        output = RUNNERS["visualize" if isinstance(spec, VisualizeSpec) else "sweep"](spec, ctx)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"\nerror: {exc}\n")
        return 2
    bar.done()
    _write(args.out, output)
    return 0


def _classify_or_screen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``classify`` and ``screen``: read the image files, run the job, write the artifacts."""
    from specs.classify import ClassifySpec, ScreenSpec

    body: dict[str, Any] = json.loads(args.spec) if args.spec else {}
    if args.model:
        body.pop("model", None)
        body["models"] = args.model
    if args.top_k is not None:
        body["top_k"] = args.top_k
    if not args.image:
        parser.error("give at least one --image FILE")
    images: dict[str, bytes] = {}
    for path in args.image:
        try:
            images[path.name if path.name not in images else str(path)] = path.read_bytes()
        except OSError as exc:
            parser.error(f"cannot read {path}: {exc}")
    try:
        if args.command == "screen":
            for text in args.rect or []:
                parts = text.split(",")
                if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
                    parser.error(f"--rect takes x,y,width,height in pixels, got {text!r}")
                x, y, w, h = (int(p) for p in parts)
                body.setdefault("rectangles", []).append({"x": x, "y": y, "width": w, "height": h})
            spec: ClassifySpec | ScreenSpec = ScreenSpec.model_validate(body)
        else:
            spec = ClassifySpec.model_validate(body)
    except ValidationError as exc:
        parser.error(str(exc))
    from worker.jobs import RUNNERS, JobContext

    try:
        ctx = JobContext(_registry(), device=args.device, images=images)
        output = RUNNERS["screen" if isinstance(spec, ScreenSpec) else "classify"](spec, ctx)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _write(args.out, output)
    return 0


def _compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``compare``: the grid, the cross-model matrix and compare.json, written to ``--out``."""
    from specs.models import CompareSpec
    from worker.jobs import RUNNERS, JobContext

    body: dict[str, Any] = json.loads(args.spec) if args.spec else {}
    if args.model:
        body["models"] = args.model
    if args.target:
        body["targets"] = [_target(t) for t in args.target]
    for key in ("method", "seed"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    try:
        spec = CompareSpec.model_validate(body)
    except ValidationError as exc:
        parser.error(str(exc))
    bar = ProgressBar()
    try:
        ctx = JobContext(_registry(), device=args.device, progress=bar)
        output = RUNNERS["compare"](spec, ctx)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"\nerror: {exc}\n")
        return 2
    bar.done()
    _write(args.out, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
