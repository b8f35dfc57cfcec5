"""Compare models (job kind ``compare``): the grid of the paper's Figure 5 and the cross-model
matrix.

Every model visualizes every target (Algorithm 1 with the spec's settings). Then every model
classifies every visualization: for the image of target ``t`` made by model ``s``, model ``j``
gives the target's probability and rank (1 = its top class). Artifacts:

- ``grid.png``: rows models, columns targets, a first column with each model's zero color;
- ``matrix.png``: one heatmap per target (rows: the model that made the image, columns: the model
  that classifies it; each cell the probability and rank) and their mean;
- ``compare.json``: every number of both, each model's zero, version and weights checksum;
- each visualization as ``<model>-<k>-<class>.png``.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from specs.models import CompareSpec
from worker.engine import optimize as O
from worker.engine import render
from worker.engine.images import flat_gray
from worker.engine.models import LoadedModel
from worker.jobs.base import Artifact, JobContext, JobOutput, resolve_device, slug


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0, 255)


@torch.no_grad()
def cross_classify(
    judge: LoadedModel, images: torch.Tensor, targets: list[int | str], top_k: int
) -> list[dict[str, Any]]:
    """``judge``'s view of each image (N, 3, H, W) whose intended class is ``targets[i]``:
    the target's probability and rank (``None`` when the judge has no such class), its top-1
    and top-k."""
    x = _resized(images.to(judge.device).float(), judge.info.input_size)
    probs = torch.cat([judge(x[i : i + 8]).float().softmax(dim=1) for i in range(0, len(x), 8)])
    out = []
    for i, target in enumerate(targets):
        p = probs[i]
        vals, idx = p.topk(min(top_k, p.shape[0]))
        labels = judge.info.labels
        top = [
            {"index": int(c), "label": labels[int(c)], "p": float(v)}
            for v, c in zip(vals, idx, strict=True)
        ]
        try:
            t = judge.info.resolve_target(target)
        except ValueError:
            out.append({"target_index": None, "p": None, "rank": None, "top": top})
            continue
        rank = int((p > p[t]).sum()) + 1
        cell: dict[str, Any] = {"target_index": t, "p": float(p[t]), "rank": rank, "top": top}
        out.append(cell)
    return out


def matrix_png(
    models: list[str], targets: list[str], cells: list[list[list[dict[str, Any]]]],
    zeros: list[tuple[float, float, float]],
) -> bytes:  # fmt: skip
    """The cross-model matrix as a PNG (matplotlib): a heatmap per target and the mean.

    ``cells[s][j][t]``: model ``j``'s view of model ``s``'s image of target ``t``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    m, n = len(models), len(targets)
    panels = [*targets, "mean over targets"]
    side = 0.9 * m + 1.2
    fig, axes = plt.subplots(
        1, n + 1, figsize=(side * (n + 1) + 1.5, side + 1.2), squeeze=False, dpi=110
    )
    for k, title in enumerate(panels):
        ax = axes[0][k]
        grid = torch.full((m, m), float("nan"))
        text = [["" for _ in range(m)] for _ in range(m)]
        for s in range(m):
            for j in range(m):
                if k < n:
                    c = cells[s][j][k]
                    if c["p"] is not None:
                        grid[s, j] = c["p"]
                        text[s][j] = f"{c['p']:.2f}\n#{c['rank']}"
                    else:
                        text[s][j] = "n/a"
                else:
                    ps = [cells[s][j][t]["p"] for t in range(n) if cells[s][j][t]["p"] is not None]
                    if ps:
                        grid[s, j] = sum(ps) / len(ps)
                        ranks = [cells[s][j][t]["rank"] for t in range(n) if cells[s][j][t]["rank"]]
                        top1 = sum(1 for r in ranks if r == 1)
                        text[s][j] = f"{float(grid[s, j]):.2f}\ntop-1 {top1}/{len(ranks)}"
        ax.imshow(grid.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        for s in range(m):
            for j in range(m):
                v = float(grid[s, j])
                color = "black" if v == v and v > 0.6 else "white"
                ax.text(j, s, text[s][j], ha="center", va="center", fontsize=8, color=color)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(m), [f"{name}" for name in models], rotation=30, ha="right", fontsize=7)
        if k == 0:
            ax.set_yticks(range(m), models, fontsize=7)
            width_pt = ax.get_position().width * fig.get_figwidth() * 72
            ax.tick_params(axis="y", pad=0.12 * width_pt)
            trans = ax.get_yaxis_transform()  # x in axes fractions, y in data
            for s, z in enumerate(zeros):  # each model's zero color, beside its row
                ax.add_patch(Rectangle((-0.1, s - 0.15), 0.07, 0.3, transform=trans,
                                       clip_on=False, facecolor=[c / 255 for c in z],
                                       edgecolor="black", lw=0.5))  # fmt: skip
            ax.set_ylabel("image made by (zero color ■)", fontsize=8)
        else:
            ax.set_yticks([])
        ax.set_xlabel("classified by", fontsize=8)
    fig.suptitle("cross-model matrix: target probability and rank", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_compare(spec: CompareSpec, ctx: JobContext) -> JobOutput:
    """Visualize every target with every model, then classify every image with every model."""
    registry, runtime, progress = ctx.registry, ctx.runtime, ctx.progress
    dev = resolve_device(ctx.device)
    out = JobOutput(result={"kind": "compare", "spec": spec.model_dump(mode="json")})
    n_rounds = len(spec.rounds()) + 1
    loaded = [registry.load(name, dev) for name in spec.models]
    finals: list[torch.Tensor] = []
    visualizations: list[dict[str, Any]] = []
    for mi, (name, model) in enumerate(zip(spec.models, loaded, strict=True)):
        targets = [model.info.resolve_target(t) for t in spec.targets]
        size = spec.size or model.info.input_size
        initial = flat_gray([spec.initial_gray] * len(targets), size, device=dev)

        def report(r: int, _n: int, step: int, q: float, mi: int = mi) -> None:
            if progress is not None:
                progress(mi * n_rounds + r, len(spec.models) * n_rounds, step, q)

        results = O.visualize(
            model, initial, torch.tensor(targets, device=dev), spec, runtime=runtime,
            progress=report,
        )  # fmt: skip
        finals.append(torch.stack([r.image for r in results]))
        for k, res in enumerate(results):
            label = model.info.labels[res.target]
            art = out.add_png(f"{name}-{k}-{slug(label)}.png", res.image)
            visualizations.append({
                "model": name, "target": {"index": res.target, "label": label,
                                          "requested": spec.targets[k]},
                "q_final": res.q_final, "total_steps": res.total_steps, "image": art,
            })  # fmt: skip
    # cells[s][j][t]: model j's view of model s's image of target t
    cells = [
        [cross_classify(judge, finals[s], list(spec.targets), spec.top_k) for judge in loaded]
        for s in range(len(loaded))
    ]
    labels = [str(v["target"]["label"]) for v in visualizations[: len(spec.targets)]]
    zeros = [m.info.zero for m in loaded]
    models_info = [
        {"name": name, **registry.provenance(name), "zero": list(m.info.zero),
         "input_size": m.info.input_size}
        for name, m in zip(spec.models, loaded, strict=True)
    ]  # fmt: skip
    rows = []
    for s, src in enumerate(spec.models):
        for j, judge in enumerate(spec.models):
            for t, target in enumerate(labels):
                c = cells[s][j][t]
                rows.append({"made_by": src, "classified_by": judge, "target": target,
                             "p": c["p"], "rank": c["rank"], "top1": c["top"][0]["label"],
                             "top": c["top"]})  # fmt: skip
    mean = [
        [_mean([c["p"] for c in cells[s][j]]) for j in range(len(loaded))]
        for s in range(len(loaded))
    ]
    report_json = {
        "models": models_info,
        "targets": labels,
        "visualizations": visualizations,
        "matrix": {"rows": "made_by", "columns": "classified_by", "mean_p": mean,
                   "cells": rows},
    }  # fmt: skip
    zero_cells = [
        torch.tensor(z).view(3, 1, 1).expand(3, finals[s].shape[-2], finals[s].shape[-1]).clone()
        for s, z in enumerate(zeros)
    ]
    grid = render.grid(
        [[zero_cells[s], *[img.cpu() for img in finals[s]]] for s in range(len(loaded))],
        row_labels=list(spec.models),
        col_labels=["zero color", *labels],
    )
    out.result.update(
        models=models_info,
        targets=labels,
        visualizations=visualizations,
        matrix={"mean_p": mean, "cells": rows},
        grid=out.add_png("grid.png", grid),
        matrix_image="matrix.png",
        report="compare.json",
    )
    out.artifacts.append(
        Artifact("matrix.png", matrix_png(list(spec.models), labels, cells, zeros), "image/png")
    )
    out.add_json("compare.json", report_json)
    return out


def _mean(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return sum(vs) / len(vs) if vs else None
