"""Entropy sweeps: one target visualized from every gray level as one batch, then measured
(paper section 2.2: gray change, 2D entropy, second-order maps, the best initial gray)."""

from __future__ import annotations

import math

import torch

from specs import SweepSpec, entropy_problem
from worker.engine import optimize as O
from worker.engine.images import flat_gray
from worker.jobs.base import Artifact, JobContext, JobOutput, resolve_device


def run_sweep(spec: SweepSpec, ctx: JobContext) -> JobOutput:
    """Visualize one target from every gray level as one batch, then measure each result."""
    from worker.engine import entropy, render

    dev = resolve_device(ctx.device)
    model = ctx.registry.load(spec.model, dev)
    target = model.info.resolve_target(spec.target)
    label = model.info.labels[target]
    size = spec.size or model.info.input_size
    problem = entropy_problem(size, spec.entropy)  # the API checks it too: fail before the work
    if problem is not None:
        raise ValueError(problem)
    levels = list(spec.gray_levels)
    initial = flat_gray(levels, size, device=dev)
    tg = torch.full((len(levels),), target, device=dev, dtype=torch.long)
    results = O.visualize(model, initial, tg, spec, runtime=ctx.runtime, progress=ctx.progress)
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
