"""The job kinds: the one registry that the API (routes, checks) and the worker (runners) share.

Adding a kind means an entry here, a runner of the same name in ``worker.jobs.RUNNERS`` (a test
checks that the two agree) and, where it needs one, a route.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from specs import SweepSpec, VisualizeSpec
from specs.atlas import AtlasSpec
from specs.classify import ClassifySpec, ScreenSpec
from specs.models import CompareSpec, ValidateModelSpec


@dataclass(frozen=True)
class KindDef:
    """A job kind: its spec model, the path it is submitted at, whether it takes images
    (uploads or artifact references of finished jobs), and whether the service fans it out in
    chunks over the worker pool (``worker.atlas_tasks``) instead of running it in one task."""

    kind: str
    spec: type[BaseModel]
    path: str
    summary: str
    images: bool = False
    internal: bool = False
    """Queued by the service itself (no submit route; e.g. a registration's validation)."""
    fanout: bool = False


KINDS: dict[str, KindDef] = {
    "visualize": KindDef(
        "visualize", VisualizeSpec, "/visualize", "Visualize classes (Algorithm 1)"
    ),
    "sweep": KindDef(
        "sweep", SweepSpec, "/entropy-sweep", "Entropy sweep over initial gray levels"
    ),
    "classify": KindDef(
        "classify",
        ClassifySpec,
        "/classify",
        "Classify images with one or more models (Fig. 6)",
        images=True,
    ),
    "screen": KindDef(
        "screen",
        ScreenSpec,
        "/screen",
        "Screen rectangles of an image with each model's zero",
        images=True,
    ),
    "compare": KindDef(
        "compare",
        CompareSpec,
        "/compare",
        "Compare models: the models × targets grid and the cross-model matrix",
    ),
    "validate_model": KindDef(
        "validate_model",
        ValidateModelSpec,
        "/models",
        "Validate a registered model before it is listed",
        internal=True,
    ),
    "atlas": KindDef(
        "atlas",
        AtlasSpec,
        "/atlas",
        "An atlas: every class of a model, in chunks over all workers",
        fanout=True,
    ),
}
