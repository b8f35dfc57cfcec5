"""What a job will cost, estimated from its spec alone, before anything is queued.

Importable without torch. The unit is the **pixel-pass**: one forward pass of one image through
the model costs its pixels (``side²``); a backward pass counts as two forward passes (the usual
rule for convolutional networks), so one optimization step of one image at 224 px costs
``3 · 224²`` per view. The estimate is an upper bound on the model work of the engine's loop
(``worker.engine.optimize.visualize``): every round runs to its step limit, every image to its
step budget, nothing stops early. Everything else (transformations, PNG encoding) is small
beside it and left out, except a sweep's entropy maps: every value they sort counts a third of a
pixel-pass (measured on the 2-core CPU: 150 ns a value, about 500 ns a pixel of lite0's forward
pass).

What is counted, per image at its side ``s`` (the spec's ``size``, else the model's input size):

- **optimization**: per round of the schedule ``max_steps_per_round`` steps (all rounds together
  at most ``max_total_steps``), plus one forward pass per round that finds the round done; the
  final round ``max_steps_per_round`` steps (``max_total_steps`` when there is no schedule). A
  step sees ``augment.views`` random views (at least 1): forward and backward, ``3 · views · s²``
  (each view at ``augment.view_scale`` of the side: ``view_scale² · s²`` pixels).
- **transformation tests**: after every round and once at the end, one forward pass per test
  view (``len(tests.rotations) + len(tests.scales)``); one more for the final probability.
- **visualize** adds per image and model the top-5 (one pass) and the quality report of the
  model and each judge (``1 + views.count`` passes at that model's input size); several models
  multiply everything. **sweep**: one image per gray level. **compare**: every target with
  every model, then every image classified by every model (one pass at the judge's input
  size). **classify** / **screen**: one forward pass per image and model at the model's input
  size (screen: original and screened). **validate_model**: two forward passes and ``1 +
  steps`` forward+backward steps at the model's input size.

:func:`estimate` gives the total, and :func:`biggest_factors` which request fields make it large
(what a client should reduce when the API refuses a job over ``TIVIS_MAX_JOB_COST``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from specs import (
    MAX_STEP_PIXELS,
    OptimizeSpec,
    SweepSpec,
    TransformTests,
    VisualizeSpec,
    entropy_elements,
    entropy_problem,
)
from specs.atlas import AtlasSpec, chunk_spec, class_count
from specs.classify import ClassifySpec, ScreenSpec
from specs.models import CompareSpec, ValidateModelSpec

BACKWARD_PASSES = 2
"""A backward pass costs about two forward passes."""

FALLBACK_SIDE = 224
"""The side assumed for a model whose catalog entry gives no ``input_size``."""

ENTROPY_VALUES_PER_PASS = 3
"""Values sorted by the entropy maps that cost one pixel-pass (module docstring)."""

__all__ = [
    "BACKWARD_PASSES",
    "ENTROPY_VALUES_PER_PASS",
    "FALLBACK_SIDE",
    "Cost",
    "Factor",
    "biggest_factors",
    "check_entropy",
    "check_step",
    "estimate",
    "image_passes",
    "rounds",
]


@dataclass(frozen=True)
class Cost:
    """An estimate: ``pixel_passes`` in total, ``passes`` (forward-pass equivalents of one
    image, any size), and ``largest_pass_pixels``: the pixels of the largest single model call
    of one image (with all the views it is seen under at once)."""

    pixel_passes: int
    passes: int
    largest_pass_pixels: int

    def as_dict(self) -> dict[str, int]:
        return {
            "pixel_passes": self.pixel_passes,
            "passes": self.passes,
            "largest_pass_pixels": self.largest_pass_pixels,
        }


@dataclass(frozen=True)
class Factor:
    """A request field and how many times the cost shrinks when it is reduced to ``baseline``
    (one model, one target or gray level, no judges, or the field's default)."""

    field: str
    value: Any
    baseline: Any
    factor: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the field, the factor, and its value (a list: how many it holds)."""
        out: dict[str, Any] = {"field": self.field, "factor": round(self.factor, 2)}
        if isinstance(self.value, list):
            out["count"] = len(self.value)
        elif not isinstance(self.value, dict):
            out["value"] = self.value
        return out

    def __str__(self) -> str:
        if isinstance(self.value, list):
            what = f"{len(self.value)} given, "
        elif isinstance(self.value, dict):
            what = ""
        else:
            what = f"{self.value}, "
        return f"{self.field} ({what}×{self.factor:.3g})"


def rounds(spec: OptimizeSpec) -> int:
    """Rounds of the schedule (``len(spec.rounds())`` without unrolling it)."""
    return 0 if spec.method == "vanilla" else sum(op.repeat for op in spec.schedule)


def _test_views(tests: TransformTests) -> int:
    return len(tests.rotations) + len(tests.scales)


def image_passes(spec: OptimizeSpec) -> int:
    """Forward-pass equivalents of optimizing one image (Algorithm 1), at most.

    A step's random view sent at ``augment.view_scale`` of the image's side counts as
    ``view_scale²`` of the image (its pixels).

    >>> image_passes(OptimizeSpec(method="vanilla", optimizer={"max_total_steps": 10},
    ...                           tests={"rotations": [], "scales": []}))
    32
    """
    cfg = spec.optimizer
    r = rounds(spec)
    aug = spec.augment
    nv = aug.views * aug.view_scale**2 if aug.enabled else 1.0
    nv_final = nv if aug.final_round else 1.0
    nt = _test_views(spec.tests)
    loop_steps = min(r * cfg.max_steps_per_round, cfg.max_total_steps)
    forward = (loop_steps + r) * nv + r * nt
    backward = loop_steps * nv
    if spec.final_round or r == 0:
        final = cfg.max_steps_per_round if r else cfg.max_total_steps
        forward += (final + 1) * nv_final
        backward += final * nv_final
    forward += nt + 1  # the final tests and the final probability
    return math.ceil(forward + BACKWARD_PASSES * backward)


def _view_side(spec: OptimizeSpec, side: int) -> int:
    """The side of a step's views sent to the model (``augment.view_scale`` of the image's)."""
    return round(side * spec.augment.view_scale) if spec.augment.enabled else side


def _step_pixels(spec: OptimizeSpec, side: int) -> int:
    vs = _view_side(spec, side)
    return max(max(1, spec.augment.views) * vs * vs, _test_views(spec.tests) * side * side)


def _side(input_sizes: Mapping[str, int], name: str) -> int:
    return int(input_sizes.get(name) or FALLBACK_SIDE)


def estimate(kind: str, spec: BaseModel, input_sizes: Mapping[str, int]) -> Cost:
    """The cost of a job of ``kind`` with ``spec``; ``input_sizes`` maps model names to their
    input side in pixels (the catalog's ``input_size``; unknown names count
    :data:`FALLBACK_SIDE`)."""
    if isinstance(spec, VisualizeSpec):
        return _visualize(spec, input_sizes)
    if isinstance(spec, SweepSpec):
        side = spec.size or _side(input_sizes, spec.model)
        per = image_passes(spec)
        n = len(spec.gray_levels)
        maps = -(-entropy_elements(side, spec.entropy) // ENTROPY_VALUES_PER_PASS)
        return Cost(n * (per * side * side + maps), n * per, _step_pixels(spec, side))
    if isinstance(spec, CompareSpec):
        return _compare(spec, input_sizes)
    if isinstance(spec, AtlasSpec):  # every class once, as a one-target visualize
        one = _visualize(chunk_spec(spec, [0]), input_sizes)
        n = class_count(spec)
        return Cost(n * one.pixel_passes, n * one.passes, one.largest_pass_pixels)
    if isinstance(spec, ValidateModelSpec):
        side = _side(input_sizes, spec.ref.partition("@")[0])
        passes = 2 + (1 + BACKWARD_PASSES) * (1 + spec.steps)
        return Cost(passes * side * side, passes, 2 * side * side)
    if isinstance(spec, ClassifySpec | ScreenSpec):
        images = max(1, len(spec.images)) if isinstance(spec, ClassifySpec) else 2
        sides = [_side(input_sizes, m) for m in spec.models]
        return Cost(
            sum(images * s * s for s in sides), images * len(sides), max(s * s for s in sides)
        )
    raise TypeError(f"no cost model for {kind} ({type(spec).__name__})")


def _visualize(spec: VisualizeSpec, input_sizes: Mapping[str, int]) -> Cost:
    quality = 1 + spec.views.count
    n = len(spec.targets)
    pixel_passes = passes = largest = 0
    for name in spec.models:
        side = spec.size or _side(input_sizes, name)
        per = image_passes(spec) + 1  # + the top-5 of the final image
        pixel_passes += n * per * side * side
        passes += n * per
        largest = max(largest, _step_pixels(spec, side))
        for judge in [name, *spec.judges]:
            js = _side(input_sizes, judge)
            pixel_passes += n * quality * js * js
            passes += n * quality
            largest = max(largest, spec.views.count * js * js)
    return Cost(pixel_passes, passes, largest)


def _compare(spec: CompareSpec, input_sizes: Mapping[str, int]) -> Cost:
    n = len(spec.targets)
    judged = sum(_side(input_sizes, j) ** 2 for j in spec.models)  # one pass per judge
    pixel_passes = passes = largest = 0
    for name in spec.models:
        side = spec.size or _side(input_sizes, name)
        per = image_passes(spec)
        pixel_passes += n * per * side * side + n * judged
        passes += n * (per + len(spec.models))
        largest = max(largest, _step_pixels(spec, side))
    return Cost(pixel_passes, passes, largest)


def check_step(spec: BaseModel, input_sizes: Mapping[str, int]) -> str | None:
    """Why one optimization step of ``spec`` would be too large (``augment.views × side²`` over
    :data:`specs.MAX_STEP_PIXELS` with each model's own side), or ``None``."""
    if not isinstance(spec, OptimizeSpec):
        return None
    if isinstance(spec, VisualizeSpec | CompareSpec):
        names = spec.models
    else:
        names = [str(getattr(spec, "model", ""))]
    views = max(1, spec.augment.views)
    for name in names:
        side = spec.size or _side(input_sizes, name)
        if views * side * side > MAX_STEP_PIXELS:
            return (
                f"views × size² must be at most {MAX_STEP_PIXELS} pixels per step, got "
                f"{views} × {side}² = {views * side * side} ({name}'s input size); use fewer "
                "views or a smaller size"
            )
    return None


def check_entropy(spec: BaseModel, input_sizes: Mapping[str, int]) -> str | None:
    """Why a sweep's entropy maps cannot be made at its image side (``size``, else the model's
    input size; :func:`specs.entropy_problem`), or ``None``."""
    if not isinstance(spec, SweepSpec):
        return None
    return entropy_problem(spec.size or _side(input_sizes, spec.model), spec.entropy)


def _baselines(spec: BaseModel) -> list[tuple[str, Any, Callable[[], BaseModel]]]:
    """(field, baseline, the spec with that field at its baseline) for every field that
    multiplies the cost."""
    out: list[tuple[str, Any, Callable[[], BaseModel]]] = []

    def swap(path: str, value: Any) -> Callable[[], BaseModel]:
        head, _, tail = path.partition(".")

        def make() -> BaseModel:
            if not tail:
                return spec.model_copy(update={head: value})
            inner = getattr(spec, head)
            return spec.model_copy(update={head: inner.model_copy(update={tail: value})})

        return make

    def add(path: str, baseline: Any) -> None:
        out.append((path, baseline, swap(path, baseline)))

    if isinstance(spec, VisualizeSpec):
        add("model", spec.models[0])
        add("targets", spec.targets[:1])
        add("judges", [])
        add("views.count", 16)
    if isinstance(spec, SweepSpec):
        add("gray_levels", spec.gray_levels[:1])
    if isinstance(spec, OptimizeSpec):
        defaults = OptimizeSpec()
        add("size", None)
        add("schedule", defaults.schedule)
        add("optimizer.max_total_steps", defaults.optimizer.max_total_steps)
        add("optimizer.max_steps_per_round", defaults.optimizer.max_steps_per_round)
        add("augment.views", 0)
        add("tests", defaults.tests)
    if isinstance(spec, ClassifySpec | ScreenSpec | CompareSpec):
        add("models", spec.models[:1])
    if isinstance(spec, CompareSpec):
        add("targets", spec.targets[:1])
    if isinstance(spec, ClassifySpec):
        add("images", spec.images[:1])
    if isinstance(spec, AtlasSpec):
        add("classes", spec.class_items()[:1] or [0])
    return out


def biggest_factors(
    kind: str, spec: BaseModel, input_sizes: Mapping[str, int], *, limit: int = 5
) -> list[Factor]:
    """The request fields that make ``spec`` cost the most, largest first: for each, how many
    times smaller the estimate gets when that field alone is reduced to its baseline."""
    total = estimate(kind, spec, input_sizes).pixel_passes
    found: list[Factor] = []
    for path, baseline, make in _baselines(spec):
        head, _, tail = path.partition(".")
        value = getattr(getattr(spec, head), tail) if tail else getattr(spec, head)
        if value == baseline:
            continue
        reduced = estimate(kind, make(), input_sizes).pixel_passes
        if reduced > 0 and total > reduced:
            found.append(Factor(path, _plain(value), _plain(baseline), total / reduced))
    found.sort(key=lambda f: -f.factor)
    return found[:limit]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
