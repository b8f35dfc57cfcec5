"""``POST /atlas``: the picture of every class of a model (or of a list or ranges of classes),
split into chunks that any number of workers run in parallel.

The one definition of a chunk: :func:`chunk_classes` (which classes chunk ``i`` holds) and
:func:`chunk_spec` (the visualize spec it runs). Torch-free: shared by API and worker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator

from specs import (
    DEFAULT_MODEL,
    PRESETS,
    OptimizeSpec,
    RandomViews,
    Target,
    VisualizeSpec,
    class_index,
)

MAX_ATLAS_CLASSES = 10_000
MAX_CHUNK = 64
_RANGE = re.compile(r"^\s*([0-9]+)\s*-\s*([0-9]+)\s*$")
_MAX_DIGITS = 12
_BIG = 10**_MAX_DIGITS
"""Where a range's end counts as "past every class": longer numbers are not converted."""


def _ends(m: re.Match[str]) -> tuple[int, int]:
    """A range's two ends, each at most :data:`_BIG` (a 5,000-digit end is not converted)."""

    def num(digits: str) -> int:
        digits = digits.lstrip("0") or "0"
        return int(digits) if len(digits) <= _MAX_DIGITS else _BIG

    return num(m.group(1)), num(m.group(2))


def _items(classes: str | Sequence[Target]) -> list[Target]:
    """A comma-separated string is a list of its parts; ``"0-99"`` stays a range."""
    if isinstance(classes, str):
        return [p.strip() for p in classes.split(",") if p.strip()]
    return list(classes)


class AtlasSpec(OptimizeSpec):
    """A model, a method (default ``invariant+``) and the classes: all of the model's (default),
    or a list of indices, names and ranges (``"0-99"``, inclusive), also as one comma-separated
    string (``"0-9, 400, soccer ball"``). The atlas shows them in class order, each once."""

    model: str = DEFAULT_MODEL
    classes: str | list[Target] | None = Field(
        default=None,
        description="null: every class of the model; or indices, names, ranges like '0-99'",
    )
    chunk_size: int = Field(default=8, ge=1, le=MAX_CHUNK, description="classes per chunk")
    initial_gray: int = Field(default=0, ge=0, le=255)
    views: RandomViews = Field(default_factory=RandomViews)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        """Like every optimize spec, with ``invariant+`` as the default method."""
        if isinstance(data, dict) and "method" not in data:
            data = {**data, "method": "invariant+"}
        return OptimizeSpec._apply_preset.__func__(cls, data)

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, v: str | list[Target] | None) -> str | list[Target] | None:
        if v is None:
            return v
        items = _items(v)
        if not items:
            raise ValueError("give at least one class, or leave classes out for all of them")
        if len(items) > MAX_ATLAS_CLASSES:
            raise ValueError(f"at most {MAX_ATLAS_CLASSES} entries, got {len(items)}")
        for item in items:
            if isinstance(item, bool):
                raise ValueError("a class is an index, a name or a range, not a boolean")
            if isinstance(item, int) and item < 0:
                raise ValueError(f"class indices are >= 0, got {item}")
            if isinstance(item, str):
                if not item.strip():
                    raise ValueError("a class name must not be empty")
                m = _RANGE.match(item)
                if m and (ends := _ends(m))[0] > ends[1]:
                    raise ValueError(f"range {item!r} runs backwards")
        return v

    def class_items(self) -> list[Target]:
        """The requested classes as a list (ranges still as strings); empty: all."""
        return [] if self.classes is None else _items(self.classes)


def resolve_classes(
    spec: AtlasSpec, labels: Sequence[str], resolve: Any = None
) -> tuple[list[int], list[tuple[int, str]]]:
    """Class indices in order, each once, and the ``(position, problem)`` of every entry that
    names no class of a model with ``labels``. ``resolve(item, position)`` may resolve names
    (e.g. the catalog's, with suggestions); by default names match labels case-insensitively."""
    n = len(labels)
    items = spec.class_items()
    if not items:
        return list(range(n)), []
    lower = {lb.lower(): i for i, lb in enumerate(labels)}
    found: set[int] = set()
    bad: list[tuple[int, str]] = []
    for pos, item in enumerate(items):
        if isinstance(item, str) and (m := _RANGE.match(item)):
            a, b = _ends(m)
            if b >= n:
                bad.append((pos, f"range {item!r} goes past the last class {n - 1}"))
                continue
            found.update(range(a, b + 1))
            continue
        try:
            idx = class_index(item, n)  # ASCII digits only: "²" is a name
            if idx is None and resolve is not None:
                idx = int(resolve(item, pos))
        except ValueError as exc:
            bad.append((pos, str(exc)))
            continue
        if idx is None:
            idx = lower.get(str(item).lower())
        if idx is None:
            bad.append((pos, f"no class {item!r}"))
        else:
            found.add(idx)
    if len(found) > MAX_ATLAS_CLASSES:
        bad.append((0, f"at most {MAX_ATLAS_CLASSES} classes, got {len(found)}"))
    return sorted(found), bad


ALL_CLASSES = 1000
"""How many classes "all of the model's" counts as where the model is not at hand (cost
estimates from the spec alone): ImageNet's."""


def class_count(spec: AtlasSpec) -> int:
    """How many classes the spec asks for, at most (ranges counted whole, names once each)."""
    items = spec.class_items()
    if not items:
        return ALL_CLASSES
    n = 0
    for item in items:
        m = _RANGE.match(item) if isinstance(item, str) else None
        if m:
            a, b = _ends(m)
            n += b - a + 1
        else:
            n += 1
    return n


def chunk_count(n_classes: int, size: int) -> int:
    return (n_classes + size - 1) // size


def chunk_classes(classes: Sequence[int], size: int, i: int) -> list[int]:
    """The classes of chunk ``i`` (0-based): consecutive runs of ``size`` in class order."""
    if not 0 <= i < chunk_count(len(classes), size):
        raise ValueError(f"chunk {i} out of range 0..{chunk_count(len(classes), size) - 1}")
    return list(classes[i * size : (i + 1) * size])


def chunk_spec(spec: AtlasSpec, classes: Sequence[int]) -> VisualizeSpec:
    """The visualize spec that chunk runs: the atlas's optimization settings for its classes."""
    data = spec.model_dump(exclude={"classes", "chunk_size"})
    data["targets"] = list(classes)
    return VisualizeSpec.model_validate(data)


__all__ = [
    "ALL_CLASSES",
    "MAX_ATLAS_CLASSES",
    "PRESETS",
    "AtlasSpec",
    "chunk_classes",
    "chunk_count",
    "chunk_spec",
    "class_count",
    "resolve_classes",
]
