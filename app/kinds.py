"""Name checks for job specs against the catalog the workers publish, and job summaries.

The kinds themselves are ``specs.kinds.KINDS`` (shared with the worker). ``classify`` and
``screen`` are checked by ``specs.classify.check_request`` (uploads, models) in
``app/routes/classify.py`` rather than by :func:`check_names`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from app.catalog import Catalog, UnknownName
from app.problems import Problem
from specs.kinds import KINDS, KindDef

__all__ = ["KINDS", "MAX_SUGGESTED", "KindDef", "check_names", "summary", "unknown_names"]


def _models(spec: BaseModel) -> list[tuple[str, str]]:
    """(field, model name) pairs a spec refers to: ``model`` (one or a list) and ``judges``."""
    out: list[tuple[str, str]] = []
    model = getattr(spec, "model", None)
    if isinstance(model, str):
        out.append(("model", model))
    elif isinstance(model, list):
        out.extend((f"model[{i}]", m) for i, m in enumerate(model))
    for field in ("models", "judges"):
        if field not in type(spec).model_fields:
            continue  # VisualizeSpec.models is a property over ``model``, not a field
        value = getattr(spec, field)
        if isinstance(value, list):
            out.extend((f"{field}[{i}]", m) for i, m in enumerate(value))
    return out


def _targets(spec: BaseModel) -> list[tuple[str, int | str]]:
    targets = getattr(spec, "targets", None)
    if isinstance(targets, list):
        return [(f"targets[{i}]", t) for i, t in enumerate(targets)]
    target = getattr(spec, "target", None)
    return [("target", target)] if isinstance(target, int | str) else []


MAX_SUGGESTED = 5
"""Unknown names that get the closest names: a model may have 100,000 labels, a request 64
targets for each of 4 models."""


def check_names(spec: BaseModel, catalog: Catalog) -> list[UnknownName]:
    """Every unknown model and class name of ``spec`` (empty: the spec can run)."""
    problems: list[UnknownName] = []
    for field, name in _models(spec):
        try:
            entry = catalog.model(name, field)
        except UnknownName as exc:
            problems.append(exc)
            continue
        for tfield, target in _targets(spec):
            try:  # close names (a search of every label) for the first few unknowns only
                entry.resolve(target, tfield, suggest=len(problems) < MAX_SUGGESTED)
            except UnknownName as exc:
                problems.append(exc)
    return problems


def unknown_names(unknown: Sequence[UnknownName], more: int = 0) -> Problem:
    """The 422 ``unknown-name`` problem for ``unknown`` (at least one): each field with its
    message and close names, the first one's close names on top; ``more`` unknown ones were
    left out of the list and are counted in the detail."""
    detail = "; ".join(str(u) for u in unknown)
    if more:
        detail += f"; and {more} more not listed"
    return Problem(
        422, "unknown-name", detail, title="Unknown model or class",
        errors=[{"field": u.field, "message": str(u), "suggestions": u.suggestions}
                for u in unknown],
        suggestions=unknown[0].suggestions,
    )  # fmt: skip


def summary(kind: str, spec: dict[str, object]) -> dict[str, object]:
    """A short description for job lists: model(s) and target(s)."""
    targets = spec.get("targets")
    if targets is None and "target" in spec:
        targets = [spec["target"]]
    if kind == "atlas":
        targets = [spec.get("classes") or "all classes"]
    return {"model": spec.get("model", spec.get("models", spec.get("ref"))), "targets": targets}
