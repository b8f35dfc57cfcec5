"""Atlas jobs: the picture of many classes of one model, made in chunks.

:func:`run_chunk` makes one chunk (its classes as one visualize batch, ``specs.atlas.chunk_spec``)
and names each class's files by its index, so chunks never collide: ``0042-goldfish-image.png``,
``-inverted.png``, ``-report.json``. :func:`atlas_index` and :func:`contact_sheet` assemble the
finished atlas. The service runs the chunks on many workers (``worker.atlas_tasks``);
:func:`run_atlas` runs them all in turn in one process (command line, tests).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from specs.atlas import AtlasSpec, chunk_classes, chunk_count, chunk_spec, resolve_classes
from worker.jobs.base import Artifact, JobContext, JobOutput, slug
from worker.jobs.visualize import run_visualize

THUMB = 64


def class_names(index: int, label: str) -> dict[str, str]:
    """The artifact names of one class of an atlas."""
    base = f"{index:04d}-{slug(label)}"
    return {
        "image": f"{base}-image.png",
        "inverted": f"{base}-inverted.png",
        "report": f"{base}-report.json",
    }


def run_chunk(spec: AtlasSpec, classes: Sequence[int], ctx: JobContext) -> JobOutput:
    """Visualize ``classes`` (one chunk) with the atlas's settings. ``result["classes"]`` holds
    one small entry per class (index, label, final and quality figures, artifact names)."""
    vis = run_visualize(chunk_spec(spec, classes), ctx)
    by_name = {a.name: a for a in vis.artifacts}
    out = JobOutput(result={"classes": []})
    for entry in vis.result["targets"]:
        idx, label = int(entry["target"]["index"]), str(entry["target"]["label"])
        names = class_names(idx, label)
        for role in ("image", "inverted"):
            out.artifacts.append(Artifact(names[role], by_name[entry["artifacts"][role]].data,
                                          "image/png"))  # fmt: skip
        out.add_json(names["report"], {**entry, "artifacts": names})
        q = entry["quality"][spec.model]
        out.result["classes"].append(
            {
                "index": idx,
                "label": label,
                "q_final": entry["q_final"],
                "quality": q["views_mean"],
                "identity": q["identity"],
                "views_min": q["views_min"],
                "artifacts": names,
            }
        )
    return out


def atlas_index(spec: AtlasSpec, entries: Sequence[dict[str, Any]], total: int) -> dict[str, Any]:
    """The atlas's JSON index: its settings and one entry per class, in class order.
    ``quality`` is the mean target probability under the random views of the quality report."""
    ordered = sorted(entries, key=lambda e: int(e["index"]))
    return {
        "kind": "atlas",
        "model": spec.model,
        "method": spec.method,
        "classes": total,
        "done": len(ordered),
        "spec": spec.model_dump(mode="json"),
        "entries": ordered,
    }


def contact_sheet(images: Sequence[tuple[int, bytes]], thumb: int = THUMB) -> bytes:
    """A PNG of every class image as a ``thumb``-pixel thumbnail, in class order, with its index
    under it: ``images`` are ``(class index, PNG bytes)``."""
    items = sorted(images)
    n = max(1, len(items))
    cols = min(32, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    cell_h = thumb + 12
    sheet = Image.new("RGB", (cols * thumb, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (idx, data) in enumerate(items):
        with Image.open(io.BytesIO(data)) as img:
            small = img.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR)
        x, y = (k % cols) * thumb, (k // cols) * cell_h
        sheet.paste(small, (x, y))
        draw.text((x + 2, y + thumb), str(idx), fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def run_atlas(spec: AtlasSpec, ctx: JobContext) -> JobOutput:
    """Every chunk of the atlas in turn, in this process: the class files, ``index.json`` and
    ``contact-sheet.png``."""
    from worker.jobs.base import resolve_device

    labels = ctx.registry.load(spec.model, resolve_device(ctx.device)).info.labels
    classes, bad = resolve_classes(spec, labels)
    if bad:
        raise ValueError("; ".join(f"classes[{pos}]: {msg}" for pos, msg in bad))
    n = chunk_count(len(classes), spec.chunk_size)
    out = JobOutput(result={})
    entries: list[dict[str, Any]] = []
    progress = ctx.progress
    for i in range(n):

        def report(r: int, rounds: int, step: int, q: float, i: int = i) -> None:
            if progress is not None:
                progress(i * rounds + r, n * rounds, step, q)

        part = run_chunk(spec, chunk_classes(classes, spec.chunk_size, i),
                         JobContext(ctx.registry, ctx.device, ctx.runtime, report))  # fmt: skip
        out.artifacts.extend(part.artifacts)
        entries.extend(part.result["classes"])
    index = atlas_index(spec, entries, len(classes))
    out.result = {k: v for k, v in index.items() if k != "entries"}
    out.result["index"] = out.add_json("index.json", index)
    pngs = {a.name: a.data for a in out.artifacts}
    sheet = contact_sheet([(e["index"], pngs[e["artifacts"]["image"]]) for e in entries])
    out.artifacts.append(Artifact("contact-sheet.png", sheet, "image/png"))
    out.result["contact_sheet"] = "contact-sheet.png"
    return out
