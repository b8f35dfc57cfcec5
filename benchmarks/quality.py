"""Quality benchmark (issue 6): vanilla, invariant and invariant+ side by side, one JSON object.

    python benchmarks/quality.py SHEET.png [--classes "soccer ball,goldfish,..."] [--json OUT]

For every class and method, one visualization from black (the default spec of that method, one
target at a time) and, on the saved 8-bit PNG decoded again:

- ``seconds``: wall time of the visualization (model already loaded and warmed up);
- ``p_identity``: the target probability of the untransformed image;
- ``views_mean`` / ``views_min``: the target probability under the quality report's 16 seeded
  random views (rotation 0-360°, scale 0.8-1.2, ``RandomViews()`` defaults);
- ``steps``: optimization steps taken; ``gradient_images``: images sent through forward+backward
  (steps times random views per step), a cost measure that machine load does not disturb.

Per method, the means over classes, and for ``invariant+`` whether it meets the issue's targets.
Classes run in the outer loop and methods in the inner one, so a burst of load on a shared
machine spreads over the methods. The contact sheet (rows = methods, columns = classes) goes to
the path given first on the command line. The machine, torch version, threads and load average
are in the output, so figures from different conditions are never mixed up.
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

from specs import OptimizeSpec, RandomViews
from worker.engine import optimize as O
from worker.engine import render
from worker.engine import transforms as T
from worker.engine.images import decode_image, encode_png, flat_gray
from worker.engine.models import LoadedModel, Registry

DEFAULT_CLASSES = "soccer ball,goldfish,golf ball,maze,daisy"
METHODS = ("vanilla", "invariant", "invariant+")
TARGETS = {"views_mean": 0.85, "p_identity": 0.9, "seconds": 16.0}


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def measure(
    model: LoadedModel, method: str, target: int, views: tuple[torch.Tensor, torch.Tensor]
) -> tuple[dict[str, Any], torch.Tensor]:
    """One visualization from black with the method's default spec, and its figures."""
    spec = OptimizeSpec(method=method)  # type: ignore[arg-type]
    tg = torch.tensor([target])
    t0, c0 = time.perf_counter(), time.process_time()
    res = O.visualize(model, flat_gray([0], model.info.input_size), tg, spec)[0]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    img = decode_image(encode_png(res.image))[None]  # what the user gets: the 8-bit PNG
    p_id = float(O.target_probs(model, img, tg)[0])
    pv = O.view_probs(model, img, tg, *views)[0]
    per_step = spec.augment.views if spec.augment.enabled else 1
    aug_steps = sum(r.steps for r in res.trace if r.operation is not None)
    final_steps = res.total_steps - aug_steps
    final_views = per_step if spec.augment.final_round else 1
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "p_identity": round(p_id, 4),
        "views_mean": round(float(pv.mean()), 4),
        "views_min": round(float(pv.min()), 4),
        "steps": res.total_steps,
        "gradient_images": aug_steps * per_step + final_steps * final_views,
        "load_before": None,
    }, res.image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sheet", type=Path, help="where to write the contact sheet PNG")
    ap.add_argument("--classes", default=DEFAULT_CLASSES, help="comma-separated class names")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = Registry().load(args.model, torch.device("cpu"))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    targets = [model.info.resolve_target(c) for c in classes]
    views = T.random_views(RandomViews())
    # warm-up: the first forward+backward pays for allocation
    x = flat_gray([0], model.info.input_size).requires_grad_(True)
    model(x)[:, 0].sum().backward()

    per_class: dict[str, dict[str, Any]] = {m: {} for m in methods}
    images: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    for c, t in zip(classes, targets, strict=True):
        for m in methods:
            load = _load()
            fig, img = measure(model, m, t, views)
            fig["load_before"] = load
            per_class[m][model.info.labels[t]] = fig
            images[m].append(img)
            print(json.dumps({"method": m, "class": c, **fig}), file=sys.stderr, flush=True)

    summary: dict[str, Any] = {}
    for m in methods:
        rows = list(per_class[m].values())
        mean = {
            k: round(statistics.fmean(r[k] for r in rows), 4)
            for k in ("seconds", "cpu_seconds", "p_identity", "views_mean", "views_min")
        }
        mean["gradient_images"] = round(statistics.fmean(r["gradient_images"] for r in rows), 1)
        mean["seconds_max"] = max(r["seconds"] for r in rows)
        summary[m] = {"per_class": per_class[m], "mean": mean}
    if "invariant+" in summary:
        rows = list(per_class["invariant+"].values())
        summary["invariant+"]["meets_targets"] = {
            "views_mean>=0.85 (mean over classes)": summary["invariant+"]["mean"]["views_mean"]
            >= TARGETS["views_mean"],
            "views_mean>=0.85 (every class)": all(
                r["views_mean"] >= TARGETS["views_mean"] for r in rows
            ),
            "p_identity>=0.9 (every class)": all(
                r["p_identity"] >= TARGETS["p_identity"] for r in rows
            ),
            "seconds<=16 (every class)": all(r["seconds"] <= TARGETS["seconds"] for r in rows),
        }

    labels = [model.info.labels[t] for t in targets]
    sheet = render.grid([images[m] for m in methods], row_labels=methods, col_labels=labels)
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    args.sheet.write_bytes(encode_png(sheet))
    out = {
        "benchmark": "quality",
        "model": args.model,
        "size": model.info.input_size,
        "initial_gray": 0,
        "views": RandomViews().model_dump(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_after": _load(),
        },
        "classes": labels,
        "methods": summary,
        "sheet": str(args.sheet),
    }
    text = json.dumps(out, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
