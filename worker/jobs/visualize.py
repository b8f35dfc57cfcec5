"""Visualize jobs: every target with every model of the spec (Algorithm 1), with a quality
report per image and, for several models, the grid of the paper's Figure 5."""

from __future__ import annotations

from typing import Any

import torch

from specs import VisualizeSpec
from worker.engine import optimize as O
from worker.engine import transforms as T
from worker.engine.images import flat_gray, invert
from worker.engine.models import LoadedModel
from worker.jobs.base import JobContext, JobOutput, resolve_device, slug


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


def add_transparency(
    out: JobOutput, base: str, image: torch.Tensor, saliency: torch.Tensor
) -> dict[str, str]:
    """The transparency artifacts of one picture: the map as a grayscale PNG and the picture with
    it as alpha (RGBA PNG). Returns their names by role."""
    from worker.engine import transparency as TR

    a = TR.alpha(saliency)
    return {
        "transparency": out.add_png(f"{base}-transparency.png", TR.gray(a)),
        "rgba": out.add_png(f"{base}-rgba.png", TR.rgba(image, a)),
    }


def run_visualize(spec: VisualizeSpec, ctx: JobContext) -> JobOutput:
    """Visualize every target with every model of the spec (each model's targets as one batch)."""
    registry, runtime, progress = ctx.registry, ctx.runtime, ctx.progress
    dev = resolve_device(ctx.device)
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

        results = O.visualize(
            model, initial, tg, spec, runtime=runtime, progress=report,
            transparency=spec.transparency,
        )  # fmt: skip
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
            if res.transparency is not None:
                entry["artifacts"].update(add_transparency(out, base, res.image, res.transparency))
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
