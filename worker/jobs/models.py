"""Validate a registered model (job kind ``validate_model``, queued by ``POST /models``).

A version in the model store becomes usable only here: it loads in its format, a forward pass on
its zero image gives one finite logit per label for a batch of two, gradients reach the input
and are finite, and a forward+backward step is timed. Then ``ready.json`` is written beside it
(the version is listed from then on); on any failure the version folder is removed and the job
fails with the cause, so nothing is left half-registered.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from core import modelstore
from specs.models import ValidateModelSpec
from worker.engine.models import LoadedModel
from worker.jobs.base import JobContext, JobOutput, resolve_device


class ModelInvalid(ValueError):
    """A registered model that failed validation; the message names the cause."""


def check_model(model: LoadedModel, steps: int = 3) -> dict[str, Any]:
    """The checks of a registration; :class:`ModelInvalid` naming the first that fails.

    Returns:
        ``outputs`` (logits per image), ``step_seconds`` (median forward+backward of one image
        at the input size) and ``grad_abs_mean`` (mean |d logit / d pixel| at the zero image).
    """
    info = model.info
    size, k = info.input_size, info.num_classes
    dev = model.device
    zero = torch.tensor(info.zero, device=dev).view(1, 3, 1, 1)
    x = zero.expand(2, 3, size, size).clone()
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as exc:
        raise ModelInvalid(
            f"the forward pass on a (2, 3, {size}, {size}) batch failed: "
            f"{type(exc).__name__}: {str(exc)[:500]}"
        ) from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelInvalid(
            f"the model must give logits of shape (batch, classes); for a batch of 2 it gave "
            f"{shape}"
        )
    if logits.shape[1] != k:
        raise ModelInvalid(
            f"the model gives {logits.shape[1]} logits per image but the metadata lists {k} "
            "labels; the output size must equal the number of labels"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ModelInvalid("the model's outputs on its zero image are not finite (NaN or inf)")
    # Gradients at the zero image plus a little seeded noise (exactly zero can sit on ReLU kinks).
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = (torch.randn(1, 3, size, size, generator=gen) * 8.0).to(dev)
    xg = (zero + noise).clamp(0, 255).requires_grad_(True)
    try:
        out = model(xg)
        out.float().logsumexp(dim=1).sum().backward()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise ModelInvalid(
            f"the backward pass failed: {type(exc).__name__}: {str(exc)[:500]}"
        ) from exc
    grad = xg.grad
    if grad is None or not bool(torch.isfinite(grad).all()):
        raise ModelInvalid("gradients do not reach the input, or are not finite")
    grad_mean = float(grad.abs().mean())
    if grad_mean == 0.0:
        raise ModelInvalid("gradients reach the input as zeros: the output does not depend on it")
    times = []
    for _ in range(steps):
        xs = (zero + noise).clamp(0, 255).requires_grad_(True)
        t0 = time.perf_counter()
        model(xs).float()[:, 0].sum().backward()  # type: ignore[no-untyped-call]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return {
        "outputs": int(logits.shape[1]),
        "step_seconds": round(statistics.median(times), 5),
        "grad_abs_mean": grad_mean,
    }


def run_validate_model(spec: ValidateModelSpec, ctx: JobContext) -> JobOutput:
    """Validate ``spec.ref`` in the model store; mark it ready, or remove it and fail."""
    registry = ctx.registry
    store = registry.store_dir
    if store is None:
        raise ValueError("this worker has no model store (TIVIS_MODEL_STORE_DIR)")
    version = modelstore.version(store, spec.ref)
    if version is None:
        raise ValueError(f"{spec.ref} is not in the model store {store} (deleted meanwhile?)")
    dev = resolve_device(ctx.device)
    try:
        sha = registry.file_sha256(version.model_file())
        if sha != spec.sha256:
            raise ModelInvalid(
                f"the stored file's sha256 {sha[:12]}… differs from the upload's "
                f"{spec.sha256[:12]}… (the model store is not shared, or the file changed)"
            )
        try:
            model = registry.load(spec.ref, dev, pending=True)
        except Exception as exc:
            raise ModelInvalid(str(exc)) from exc
        report = check_model(model, spec.steps)
    except Exception as exc:
        modelstore.remove(version.path)
        registry.forget(spec.ref)
        if isinstance(exc, ModelInvalid):
            raise
        raise ModelInvalid(f"{type(exc).__name__}: {exc}") from exc
    info = model.info
    ready = {
        "ref": spec.ref,
        "validated_at": time.time(),
        "device": str(dev),
        **report,
        "info": info.describe(),
        "labels": list(info.labels),
    }
    modelstore.write_json_atomic(version.path / modelstore.READY, ready)
    modelstore.touch(store)
    result = {
        "kind": "validate_model",
        "model": spec.ref,
        "status": "ready",
        "sha256": spec.sha256,
        "format": spec.format,
        **report,
        "info": info.describe(),
    }
    return JobOutput(result=result)
