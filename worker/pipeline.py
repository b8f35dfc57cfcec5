"""From a job spec to a result and its artifacts: the glue between the engine and its callers.

The Celery tasks and the command line both call these functions; they hold no Celery, Redis or
HTTP either, so they are tested directly. Artifacts are returned as bytes with a media type; the
caller decides where they go (Redis for the service, files for the command line).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from specs import SweepSpec, VisualizeSpec
from worker.engine import optimize as O
from worker.engine import transforms as T
from worker.engine.images import encode_png, flat_gray, invert
from worker.engine.models import LoadedModel, Registry

Progress = Callable[[int, int, int, float], None]


@dataclass(frozen=True)
class Artifact:
    name: str
    data: bytes
    media_type: str


@dataclass
class JobOutput:
    """``result`` is JSON-ready; ``artifacts`` are the files the job produced."""

    result: dict[str, Any]
    artifacts: list[Artifact] = field(default_factory=list)

    def add_png(self, name: str, image: torch.Tensor) -> str:
        self.artifacts.append(Artifact(name, encode_png(image), "image/png"))
        return name

    def add_json(self, name: str, obj: Any) -> str:
        data = json.dumps(obj, indent=2, sort_keys=False).encode()
        self.artifacts.append(Artifact(name, data, "application/json"))
        return name


def slug(text: str) -> str:
    """A file-name-safe form of a class label: ``soccer ball`` -> ``soccer_ball``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "class"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def quality(
    model: LoadedModel, images: torch.Tensor, targets: torch.Tensor, spec: VisualizeSpec
) -> list[dict[str, float]]:
    """Target probability at identity and under the spec's seeded random views, per image."""
    angles, scales = T.random_views(spec.views)
    images = images.to(model.device)
    size = model.info.input_size
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0, 255)
    ident = O.target_probs(model, images, targets)
    views = O.view_probs(model, images, targets, angles, scales)
    return [
        {
            "identity": float(ident[i]),
            "views_mean": float(views[i].mean()),
            "views_min": float(views[i].min()),
        }
        for i in range(images.shape[0])
    ]


def run_visualize(
    spec: VisualizeSpec,
    registry: Registry,
    *,
    device: str = "auto",
    runtime: O.Runtime | None = None,
    progress: Progress | None = None,
) -> JobOutput:
    """Visualize every target with every model of the spec (each model's targets as one batch)."""
    dev = resolve_device(device)
    out = JobOutput(result={"kind": "visualize", "spec": spec.model_dump(mode="json")})
    per_model: list[dict[str, Any]] = []
    models = spec.models
    n_rounds = len(spec.rounds()) + 1
    finals: dict[str, torch.Tensor] = {}
    for mi, name in enumerate(models):
        model = registry.load(name, dev)
        targets = [model.info.resolve_target(t) for t in spec.targets]
        size = spec.size or model.info.input_size
        initial = flat_gray([spec.initial_gray] * len(targets), size, device=dev)
        tg = torch.tensor(targets, device=dev)

        def report(r: int, _n: int, step: int, q: float, mi: int = mi) -> None:
            if progress is not None:
                progress(mi * n_rounds + r, len(models) * n_rounds, step, q)

        results = O.visualize(model, initial, tg, spec, runtime=runtime, progress=report)
        images = torch.stack([r.image for r in results])
        finals[name] = images
        top5 = O.topk(model, images, 5)
        judged = {name: quality(model, images, tg, spec)}
        for judge in spec.judges:
            jm = registry.load(judge, dev)
            jt = torch.tensor([jm.info.resolve_target(t) for t in spec.targets], device=dev)
            judged[judge] = quality(jm, images, jt, spec)
        entries = []
        for k, res in enumerate(results):
            label = model.info.labels[res.target]
            base = f"{name}-{k}-{slug(label)}"
            entry: dict[str, Any] = {
                "model": name,
                "target": {"index": res.target, "label": label, "requested": spec.targets[k]},
                "initial_gray": spec.initial_gray,
                "size": size,
                "q_final": res.q_final,
                "top5": [{"index": i, "label": lb, "p": p} for i, lb, p in top5[k]],
                "tests": res.tests,
                "test_min": min(res.tests.values()) if res.tests else None,
                "test_mean": sum(res.tests.values()) / len(res.tests) if res.tests else None,
                "quality": {m: q[k] for m, q in judged.items()},
                "total_steps": res.total_steps,
                "stopped_by": res.stopped_by,
                "trace": [r.as_dict() for r in res.trace],
            }
            entry["artifacts"] = {
                "image": out.add_png(f"{base}-image.png", res.image),
                "inverted": out.add_png(f"{base}-inverted.png", invert(res.image)),
                "report": f"{base}-report.json",
            }
            out.add_json(entry["artifacts"]["report"], entry)
            entries.append(entry)
        per_model.extend(entries)
    out.result["targets"] = per_model
    if len(models) > 1:
        from worker.engine import render

        labels = [str(e["target"]["label"]) for e in per_model[: len(spec.targets)]]
        cells = [[img for img in finals[m]] for m in models]
        grid = render.grid(cells, row_labels=models, col_labels=labels)
        out.result["grid"] = out.add_png("grid.png", grid)
    return out


def run_sweep(
    spec: SweepSpec,
    registry: Registry,
    *,
    device: str = "auto",
    runtime: O.Runtime | None = None,
    progress: Progress | None = None,
) -> JobOutput:
    """Visualize one target from every gray level as one batch, then measure each result."""
    from worker.engine import entropy, render

    dev = resolve_device(device)
    model = registry.load(spec.model, dev)
    target = model.info.resolve_target(spec.target)
    label = model.info.labels[target]
    size = spec.size or model.info.input_size
    levels = list(spec.gray_levels)
    initial = flat_gray(levels, size, device=dev)
    tg = torch.full((len(levels),), target, device=dev, dtype=torch.long)
    results = O.visualize(model, initial, tg, spec, runtime=runtime, progress=progress)
    images = torch.stack([r.image for r in results])
    rep = entropy.measure(images, torch.tensor(levels, device=dev), spec.entropy)
    totals = rep.second_order_total.tolist()
    best = entropy.best_gray(levels, rep.second_order_total)

    out = JobOutput(result={"kind": "sweep", "spec": spec.model_dump(mode="json")})
    rows = []
    for k, (g, res) in enumerate(zip(levels, results, strict=True)):
        rows.append(
            {
                "gray": g,
                "image": out.add_png(f"level-{g:03d}.png", res.image),
                "gray_change_signed": float(rep.gray_change[k]),
                "gray_change_abs": float(rep.gray_change_abs[k]),
                "entropy2d": float(rep.entropy2d[k]),
                "second_order_total": float(totals[k]),
                "second_order_mean": float(rep.second_order_mean[k]),
                "q_final": res.q_final,
                "test_mean": sum(res.tests.values()) / len(res.tests) if res.tests else None,
                "total_steps": res.total_steps,
            }
        )
    captions = [str(g) for g in levels]
    win = spec.entropy.window
    out.add_png("row-a-results.png", render.strip(images, captions))
    out.add_png("row-b-gray.png", render.strip(render.gray_images(rep.gray), captions))
    for name, maps, window, what in (
        ("row-c-entropy.png", rep.map1, win, "bits"),
        ("row-d-second-order.png", rep.map2, spec.entropy.window2, "bits"),
    ):
        vmax = math.log2(window * window)
        row = render.strip(render.heatmap(maps, 0.0, vmax, size), captions)
        bar = render.colorbar(0.0, vmax, what, int(row.shape[1]))
        out.add_png(name, render.hcat([row, bar]))
    x = [float(g) for g in levels]
    out.artifacts.append(
        Artifact(
            "gray-change.png",
            render.line_plot(
                x,
                {
                    "mean |Gray − g|": rep.gray_change_abs.tolist(),
                    "mean(Gray) − g": rep.gray_change.tolist(),
                },
                title=f"Gray change after optimization: {label} on {spec.model}",
                x_label="initial gray level g (0–255)",
                y_label="gray change (gray levels)",
            ),
            "image/png",
        )
    )
    out.artifacts.append(
        Artifact(
            "second-order-total.png",
            render.line_plot(
                x,
                {"second-order total entropy": totals},
                title=f"Second-order total entropy: {label} on {spec.model}",
                x_label="initial gray level g (0–255)",
                y_label="second-order total entropy (bits)",
                mark_x=float(best),
                mark_label=f"best g = {best}",
            ),
            "image/png",
        )
    )
    sweep = {
        "model": spec.model,
        "target": {"index": target, "label": label, "requested": spec.target},
        "best_initial_gray": best,
        "levels": rows,
        "entropy": spec.entropy.model_dump(),
    }
    out.add_json("sweep.json", sweep)
    out.result.update(sweep)
    return out
