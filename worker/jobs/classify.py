"""Classify and screen jobs, from spec to result and artifacts (paper section 3.3).

The glue between :mod:`specs.classify` and :mod:`worker.engine.classify`: no Celery, Redis or
HTTP. Images come in as bytes, keyed by the names the spec uses (an upload's name, or
``job/artifact`` for an artifact of a finished job; see ``specs.classify.image_key``), or as a
list in order. Every image is checked again by content (``specs.classify.check_upload``) before
it is decoded.

Artifacts:
    classify: ``panel.png`` (Figure 6) and ``classify.json`` (the result).
    screen: ``panel.png`` (Figure 7), ``screen.json`` (the result), and per model
    ``screened-<model>.png`` (the whole photo with the rectangles filled with that model's zero).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from specs.classify import (
    ClassifySpec,
    ScreenSpec,
    UploadInfo,
    UploadRejected,
    check_upload,
    image_key,
)
from worker.engine import classify as D
from worker.engine.images import decode_image
from worker.engine.models import LoadedModel
from worker.jobs.base import Images, JobContext, JobOutput, resolve_device


def _named(images: Images, keys: list[str]) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` in the order the spec names them (all of them, in order, if none)."""
    pairs = (
        list(images.items())
        if isinstance(images, Mapping)
        else [(f"image-{i}", data) for i, data in enumerate(images)]
    )
    if not keys:
        if not pairs:
            raise ValueError("expected at least one image, got none")
        return pairs
    have = dict(pairs)
    missing = [k for k in keys if k not in have]
    if missing:
        raise ValueError(
            f"no image named {', '.join(map(repr, missing))} (have: {', '.join(have) or 'none'})"
        )
    return [(k, have[k]) for k in keys]


def _decode(name: str, data: bytes, max_pixels: int) -> tuple[UploadInfo, torch.Tensor]:
    try:
        info = check_upload(data, max_bytes=sys.maxsize, max_pixels=max_pixels)
    except UploadRejected as exc:
        raise ValueError(f"image {name!r}: {exc.message}") from exc
    return info, decode_image(data)


def _model_entry(model: LoadedModel) -> dict[str, Any]:
    info = model.info
    return {
        "input_size": info.input_size,
        "resize": info.resize,
        "resize_to": info.resize_to,
        "interpolation": info.interpolation,
        "zero": list(info.zero),
    }


def _top(preds: Sequence[D.Prediction]) -> list[dict[str, object]]:
    return [p.as_dict() for p in preds]


def run_classify(spec: ClassifySpec, ctx: JobContext) -> JobOutput:
    """Top-k of every image under every model of the spec (Figure 6).

    Result: ``{"kind": "classify", "spec", "models": {name: {input_size, resize, ...}},
    "images": [{"name", "format", "width", "height", "predictions": {model: [{index, label,
    p}, ...]}, "fitted": {model: {resized_height, resized_width, crop_top, crop_left,
    crop_size}}}], "panel": "panel.png"}``: how each image was resized for each model is in
    ``fitted`` (numbers) and ``models[name].resize`` (words).
    """
    dev = resolve_device(ctx.device)
    named = _named(ctx.images, spec.image_keys())
    decoded = [(name, *_decode(name, data, ctx.max_pixels)) for name, data in named]
    photos = [t for _, _, t in decoded]
    out = JobOutput(result={"kind": "classify", "spec": spec.model_dump(mode="json")})
    models: dict[str, Any] = {}
    per_model: dict[str, list[list[D.Prediction]]] = {}
    infos = {}
    for name in spec.models:
        model = ctx.registry.load(name, dev)
        infos[name] = model.info
        preds, _ = D.classify(model, photos, spec.top_k)
        per_model[name] = preds
        models[name] = _model_entry(model)
    out.result["models"] = models
    out.result["images"] = [
        {
            "name": name,
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "predictions": {m: _top(per_model[m][i]) for m in spec.models},
            "fitted": {m: D.fit_geometry(info.height, info.width, infos[m]) for m in spec.models},
        }
        for i, (name, info, _) in enumerate(decoded)
    ]
    panel = D.classify_panel(photos, [n for n, _, _ in decoded], per_model)
    out.result["panel"] = out.add_png("panel.png", panel)
    out.add_json("classify.json", out.result)
    return out


def run_screen(spec: ScreenSpec, ctx: JobContext) -> JobOutput:
    """Screen the spec's rectangles with each model's zero; top-k before and after (Figure 7).

    Result: ``{"kind": "screen", "spec", "image": {name, format, width, height}, "models":
    [{"model", "zero", "resize", ..., "before": [...], "after": [...], "top1_changed",
    "original_top1": {index, label, p_before, p_after}, "fitted", "covered", "screened"}],
    "panel": "panel.png"}``. ``covered`` is the fraction of the model's input that the screen
    covers after resizing and cropping (0 if the crop cut the rectangles away).
    """
    dev = resolve_device(ctx.device)
    keys = [image_key(spec.image)] if spec.image is not None else []
    named = _named(ctx.images, keys)
    if len(named) != 1:
        raise ValueError(f"screen takes exactly one image, got {len(named)}")
    name, data = named[0]
    info, photo = _decode(name, data, ctx.max_pixels)
    spec.check_rectangles(info.width, info.height)
    rects = [(r.x, r.y, r.width, r.height) for r in spec.rectangles]
    mask = D.screen_mask(info.height, info.width, rects)
    out = JobOutput(
        result={
            "kind": "screen",
            "spec": spec.model_dump(mode="json"),
            "image": {"name": name, **info._asdict()},
        }
    )
    rows = []
    entries = []
    for mname in spec.models:
        model = ctx.registry.load(mname, dev)
        zero = model.info.zero
        screened = D.fill_rectangles(photo, rects, zero)
        batch = D.fit(torch.stack([photo, screened]).to(dev), model.info)  # (2, 3, N, N)
        probs = D.predict(model, batch)
        before, after = D.topk(probs, model.info.labels, spec.top_k)
        top1 = before[0]
        covered = float(D.fit(mask, model.info).mean())
        entry: dict[str, Any] = {
            "model": mname,
            **_model_entry(model),
            "before": _top(before),
            "after": _top(after),
            "top1_changed": after[0].index != top1.index,
            "original_top1": {
                "index": top1.index,
                "label": top1.label,
                "p_before": top1.p,
                "p_after": float(probs[1, top1.index]),
            },
            "fitted": D.fit_geometry(info.height, info.width, model.info),
            "covered": covered,
            "screened": out.add_png(f"screened-{mname}.png", screened),  # names are file-safe
        }
        entries.append(entry)
        rows.append((mname, batch[0], batch[1], before, after))
    out.result["models"] = entries
    out.result["note"] = (
        "screened-*.png are 8-bit: a zero of 127.5 is saved as 128; predictions were made on the "
        "unrounded image"
    )
    out.result["panel"] = out.add_png("panel.png", D.screen_panel(rows))
    out.add_json("screen.json", out.result)
    return out
