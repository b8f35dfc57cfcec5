"""What the workers can run, as they published it into Redis: model names and class labels.

The API validates model and class names against this before queueing, without torch. Name
resolution mirrors the engine's ``ModelInfo.resolve_target`` (index, ASCII digit string or
case-insensitive name), and unknown names get the closest names (difflib).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from specs import class_index


class UnknownName(ValueError):
    """An unknown model or class; ``field`` is the request field, ``suggestions`` close names."""

    def __init__(self, field: str, message: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.field = field
        self.suggestions = suggestions


@dataclass(frozen=True)
class ModelEntry:
    name: str
    info: dict[str, Any]
    labels: tuple[str, ...]
    lowered: tuple[str, ...]

    @cached_property
    def by_name(self) -> dict[str, int]:
        """Lower-case label -> its (first) class index."""
        return {lb: i for i, lb in reversed(list(enumerate(self.lowered)))}

    def resolve(self, target: int | str, field: str, *, suggest: bool = True) -> int:
        """The class index of ``target`` or :class:`UnknownName`, with the closest names when
        ``suggest`` (a search of every label: skip it for all but the first few unknowns)."""
        n = len(self.labels)
        text = str(target).strip()
        try:
            index = class_index(target if not isinstance(target, bool) else text, n)
        except ValueError as exc:
            raise UnknownName(field, str(exc), []) from exc
        if index is not None:
            return index
        key = text.lower()
        if key in self.by_name:
            return self.by_name[key]
        if not suggest:
            raise UnknownName(field, f"{self.name} has no class {text!r}", [])
        close = difflib.get_close_matches(key, self.lowered, n=5, cutoff=0.5)
        contains = [lb for lb in self.lowered if key in lb and lb not in close]
        suggestions = [self.labels[self.lowered.index(c)] for c in (close + contains)[:5]]
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
        raise UnknownName(field, f"{self.name} has no class {text!r}{hint}", suggestions)

    def search(self, q: str | None, limit: int) -> list[dict[str, Any]]:
        """Classes whose label contains ``q`` (case-insensitive), prefix matches first; close
        matches when nothing contains it."""
        items = list(enumerate(self.labels))
        if q:
            key = q.strip().lower()
            hits = [(i, lb) for i, lb in items if key in self.lowered[i]]
            if not hits:
                close = difflib.get_close_matches(key, self.lowered, n=limit, cutoff=0.5)
                hits = [(self.lowered.index(c), self.labels[self.lowered.index(c)]) for c in close]
            else:
                hits.sort(key=lambda t: (not self.lowered[t[0]].startswith(key), t[0]))
            items = hits
        return [{"index": i, "label": lb} for i, lb in items[:limit]]


class Catalog:
    """Models by name, from the ``{name: {"info": ..., "labels": [...]}}`` hash workers publish."""

    def __init__(self, raw: Mapping[str, Mapping[str, Any]]) -> None:
        self.models: dict[str, ModelEntry] = {}
        for name, entry in sorted(raw.items()):
            labels = tuple(str(s) for s in entry.get("labels", ()))
            self.models[name] = ModelEntry(
                name, dict(entry.get("info", {})), labels, tuple(s.lower() for s in labels)
            )

    def __bool__(self) -> bool:
        return bool(self.models)

    def input_sizes(self) -> dict[str, int]:
        """Each model's input side in pixels, as published (0 where an entry gives none)."""
        return {n: int(e.info.get("input_size") or 0) for n, e in self.models.items()}

    def model(self, name: str, field: str = "model") -> ModelEntry:
        if name in self.models:
            return self.models[name]
        known = list(self.models)
        suggestions = difflib.get_close_matches(name, known, n=5, cutoff=0.3)
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
        raise UnknownName(
            field, f"unknown model {name!r}{hint} (available: {', '.join(known)})", suggestions
        )
