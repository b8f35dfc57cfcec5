"""The model store's layout, read side: shared by ``core.modelstore`` (which writes the store and
documents the layout) and the engine's registry, which may import neither ``core`` nor anything
but torch and ``specs``. Layout: ``<store>/<name>@<v>/`` holding the model file, ``meta.json`` (the
registration) and, once a worker validated it, ``ready.json``. Plain file reads, no torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

META = "meta.json"
READY = "ready.json"
_VERSION_DIR = re.compile(r"^([a-z][a-z0-9_.-]{0,62})@([1-9][0-9]{0,8})$")

__all__ = ["META", "READY", "Version", "latest_ready", "resolve", "version", "versions"]


@dataclass(frozen=True)
class Version:
    """One registered version on disk."""

    name: str
    version: int
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def ready(self) -> bool:
        return (self.path / READY).is_file()

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.path / META).read_text()))

    def meta_or_none(self) -> dict[str, Any] | None:
        """``meta()``, or None once the version is gone (a failed validation removes its
        folder, maybe between a listing and this read)."""
        try:
            return self.meta()
        except FileNotFoundError:
            return None

    def ready_info(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.path / READY).read_text()))
        except FileNotFoundError:
            return None

    def model_file(self) -> Path:
        return self.path / str(self.meta()["file"])


def versions(store: Path, name: str | None = None) -> list[Version]:
    """Every version on disk (of ``name``, or all), sorted by name then version."""
    if not store.is_dir():
        return []
    out = []
    for entry in store.iterdir():
        m = _VERSION_DIR.match(entry.name)
        if m and (name is None or m.group(1) == name) and (entry / META).is_file():
            out.append(Version(m.group(1), int(m.group(2)), entry))
    return sorted(out, key=lambda v: (v.name, v.version))


def version(store: Path, ref: str) -> Version | None:
    m = _VERSION_DIR.match(ref)
    if m is None:
        return None
    path = store / ref
    return Version(m.group(1), int(m.group(2)), path) if (path / META).is_file() else None


def latest_ready(store: Path, name: str) -> Version | None:
    """The newest version of ``name`` that a worker has validated."""
    ready = [v for v in versions(store, name) if v.ready]
    return ready[-1] if ready else None


def resolve(store: Path, name: str, *, pending: bool = False) -> Version | None:
    """``name@v`` (that version) or ``name`` (its newest ready version); ``None`` when there is
    none. With ``pending`` a version that is not validated yet is returned too."""
    if "@" in name:
        v = version(store, name)
        return v if v is not None and (pending or v.ready) else None
    return latest_ready(store, name)
