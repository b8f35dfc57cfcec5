"""Reading the model store of registered models (the engine's side of ``core.modelstore``).

The engine imports no ``core`` (import contracts), so the few lines that read the store's layout
live here too; ``core.modelstore`` writes it and documents it. Layout: ``<store>/<name>@<v>/``
holding the model file, ``meta.json`` (the registration) and, once a worker validated it,
``ready.json``. Read only.
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


def resolve(store: Path, name: str, *, pending: bool = False) -> Version | None:
    """``name@v`` (that version) or ``name`` (its newest validated version); ``None`` when there
    is none. With ``pending`` a version not validated yet is returned too."""
    if "@" in name:
        m = _VERSION_DIR.match(name)
        if m is None or not (store / name / META).is_file():
            return None
        v = Version(m.group(1), int(m.group(2)), store / name)
        return v if pending or v.ready else None
    ready = [v for v in versions(store, name) if v.ready]
    return ready[-1] if ready else None
