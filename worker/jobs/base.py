"""What every job runner shares: its one signature, its context and its output.

A runner is ``run(spec, ctx) -> JobOutput``: the spec of its kind (``specs.kinds``), and a
:class:`JobContext` with the model registry, the device, the engine's runtime, a progress callback
and the job's input images. Runners hold no Celery, Redis or HTTP, so the Celery task, the command
line and the tests call them alike. Artifacts are returned as bytes with a media type; the caller
decides where they go (the service's store, files for the command line).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from specs.classify import DEFAULT_MAX_UPLOAD_PIXELS
from worker.engine.images import encode_png
from worker.engine.models import Registry
from worker.engine.optimize import Runtime

Progress = Callable[[int, int, int, float], None]
"""``progress(round, rounds, step, q_c)``; raising from it stops the job."""

Images = Mapping[str, bytes] | Sequence[bytes]
"""A job's input images, by the names its spec uses (or a list, in order)."""


@dataclass(frozen=True)
class JobContext:
    """Everything a runner gets besides its spec."""

    registry: Registry
    device: str = "auto"
    runtime: Runtime | None = None
    progress: Progress | None = None
    images: Images = ()
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS


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


def use_determinism(on: bool, device: str) -> None:
    """Deterministic kernels (``TIVIS_DETERMINISTIC``) where ``device`` resolves to a GPU; on
    the CPU the kernels are deterministic as they are (MKL's since ``worker.engine`` set
    ``MKL_CBWR``)."""
    if on and resolve_device(device).type == "cuda":
        from worker.engine.determinism import deterministic

        deterministic(True)


def model_versions(registry: Registry, spec: Any) -> dict[str, dict[str, str | None]]:
    """The exact version and weights checksum of every model a spec names (``model``,
    ``models``, ``judges``), as the job ran with them: ``{name: {version, sha256}}``."""
    names: list[str] = []
    for field_name in ("model", "models", "judges"):
        value = getattr(spec, field_name, None)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list | tuple):
            names.extend(str(v) for v in value)
    out: dict[str, dict[str, str | None]] = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = registry.provenance(name)
        except ValueError:
            continue
    return out
