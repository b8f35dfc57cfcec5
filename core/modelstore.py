"""The model store: registered model files on a volume every worker and the API can read.

Torch-free and Redis-free; used by the API (writes registrations, checks files), the worker
(marks a validated version ready, removes a failed one) and the engine's registry (reads).
Layout under the store directory (``TIVIS_MODEL_STORE_DIR``, default ``<data_dir>/models``)::

    .incoming/<random>/          a registration being written (renamed into place when whole)
    <name>@<version>/
        model.<ext>              the file as uploaded (.pt2, .pt, .pth or .safetensors)
        meta.json                the registration: metadata, format, sha256, size, job id
        ready.json               written by the worker that validated it (info, labels, timing)

A version directory appears in one ``rename`` and is removed as a whole, so readers see a
version completely or not at all; a version is usable once ``ready.json`` exists (written by
an atomic rename as well).

The file checks here are what can be known without torch (:func:`check_file`): the container
(zip for ``.pt``, ``.pt2`` and ``.pth``, the header of a ``.safetensors`` file) and, for a
``.pth``, every global its pickle refers to, read with ``pickletools`` (never executed), so that a
pickled object disguised as a state dict is refused before a worker sees it. The worker still
reads state dicts only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickletools
import re
import shutil
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Any

from specs.modelstore import META as META  # the layout's read side, shared with the engine
from specs.modelstore import READY as READY
from specs.modelstore import Version as Version
from specs.modelstore import latest_ready as latest_ready
from specs.modelstore import resolve as resolve
from specs.modelstore import version as version
from specs.modelstore import versions as versions

INCOMING = ".incoming"


class FileRejected(ValueError):
    """A model file that cannot be registered; the message names the cause."""


def store_stamp(store: Path) -> int:
    """Changes whenever a version appears, is removed or becomes ready (see :func:`touch`)."""
    try:
        return store.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def touch(store: Path) -> None:
    """Mark the store changed (after a version became ready), for :func:`store_stamp`."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(store)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def incoming_dir(store: Path) -> Path:
    """A fresh private folder to write a registration into before it is renamed into place."""
    d = store / INCOMING / uuid.uuid4().hex
    d.mkdir(parents=True)
    return d


def publish(staged: Path, store: Path, ref: str) -> Path:
    """Rename the staged folder to ``store/ref`` (fails if that version exists)."""
    target = store / ref
    os.rename(staged, target)  # atomic; refuses a non-empty target
    return target


def remove(path: Path) -> None:
    """Remove a version (or staged) folder: renamed out of sight first, so that a reader never
    sees half of it, then deleted."""
    if not path.exists():
        return
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- file checks

ZIP_MAGIC = b"PK\x03\x04"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}
_SAFE_TORCH = re.compile(r"^(\w+Storage|u?int\d+|float\d*|bfloat16|half|double|bool|long|int)$")


def _allowed(module: str, name: str) -> bool:
    return (module, name) in _SAFE_GLOBALS or (module == "torch" and bool(_SAFE_TORCH.match(name)))


def pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """The ``(module, name)`` pairs a pickle refers to (GLOBAL and STACK_GLOBAL), read with
    ``pickletools`` without executing anything."""
    found: list[tuple[str, str]] = []
    strings: list[str] = []  # recent string constants (STACK_GLOBAL takes the last two)
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.append((module, attr))
            last = None
        elif name == "STACK_GLOBAL":
            if len(strings) < 2:
                found.append(("?", "?"))
            else:
                found.append((strings[-2], strings[-1]))
            last = None
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
            last = str(arg)
        elif name in ("MEMOIZE",):
            memo[len(memo)] = last
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(str(arg))] = last
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(str(arg)))
            if isinstance(value, str):
                strings.append(value)
            last = value
        else:
            last = None
    return found


def _refuse_globals(refs: list[tuple[str, str]], what: str) -> None:
    bad = sorted({f"{m}.{n}" for m, n in refs if not _allowed(m, n)})
    if bad:
        raise FileRejected(
            f"{what} is not plain tensors: its pickle refers to {', '.join(bad[:5])}, which "
            "tensors never need (a pickled object or code, refused)"
        )


def _check_export_pickles(zf: zipfile.ZipFile, names: list[str]) -> None:
    """A torch.export archive keeps tensors raw; the few pickles it may hold (sample inputs,
    tensors of unusual types) must hold tensors only, and opaque pickled objects are refused."""
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if base.startswith(("opaque_obj", "custom_obj")):
            raise FileRejected(
                f"the .pt2 program holds a pickled object ({name}); only tensors are accepted"
            )
        with zf.open(name) as f:
            head = f.read(4)
        if head == ZIP_MAGIC:  # a torch.save payload inside the archive
            import io

            with zipfile.ZipFile(io.BytesIO(zf.read(name))) as inner:
                for pkl in (n for n in inner.namelist() if n.endswith(".pkl")):
                    _refuse_globals(pickle_globals(inner.read(pkl)), f"the .pt2 member {name}")
        elif head[:1] == b"\x80":
            _refuse_globals(pickle_globals(zf.read(name)), f"the .pt2 member {name}")


def _check_zip(path: Path, fmt: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if fmt == "state_dict":
                pkls = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
                if len(pkls) != 1:
                    raise FileRejected(
                        "a .pth file must be one state dict saved with torch.save (a zip with "
                        f"one data.pkl), found {len(pkls)} data.pkl in {len(names)} entries"
                    )
                with zf.open(pkls[0]) as f:
                    payload = f.read(64 * 1024 * 1024)
                try:
                    refs = pickle_globals(payload)
                except Exception as exc:
                    raise FileRejected(f"the .pth file's pickle is malformed: {exc}") from exc
                _refuse_globals(refs, "the .pth file (save model.state_dict(), or .safetensors)")
            elif fmt == "export":
                if not any("/models/" in n and n.endswith(".json") for n in names):
                    raise FileRejected(
                        "a .pt2 file must be a torch.export program (torch.export.save); "
                        "this zip holds no serialized program"
                    )
                _check_export_pickles(zf, names)
            elif fmt == "torchscript" and not any(
                n.endswith("constants.pkl") or "/code/" in n for n in names
            ):
                raise FileRejected(
                    "a .pt file must be a TorchScript module (torch.jit.save); this zip "
                    "holds no TorchScript code"
                )
    except zipfile.BadZipFile as exc:
        raise FileRejected(f"the file is not a valid zip archive: {exc}") from exc


def _check_safetensors(path: Path, size: int) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise FileRejected("a .safetensors file starts with an 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(MAX_SAFETENSORS_HEADER, size - 8):
            raise FileRejected(
                f"not a safetensors file: header length {n} does not fit a {size}-byte file"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileRejected(f"not a safetensors file: the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise FileRejected("not a safetensors file: the header is not a JSON object")
    data_len = size - 8 - n
    tensors = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            ok = dtype in SAFETENSORS_DTYPES and 0 <= start <= end <= data_len
            ok = ok and end - start == count * SAFETENSORS_DTYPES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise FileRejected(f"not a valid safetensors file: bad entry for tensor {key!r}")
        tensors += 1
    if tensors == 0:
        raise FileRejected("the safetensors file holds no tensors")


def check_file(path: Path, fmt: str, size: int) -> None:
    """What can be checked without torch; :class:`FileRejected` naming the cause."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if fmt in ("export", "torchscript", "state_dict"):
        if magic != ZIP_MAGIC:
            what = {"export": ".pt2", "torchscript": ".pt", "state_dict": ".pth"}[fmt]
            hint = (
                " (a bare pickle: save with torch.save's default zip format)"
                if magic[:1] == b"\x80"
                else ""
            )
            raise FileRejected(f"a {what} file must be a zip archive; this one is not{hint}")
        _check_zip(path, fmt)
    elif fmt == "safetensors":
        _check_safetensors(path, size)
    else:
        raise FileRejected(f"unknown format {fmt!r}")


# --------------------------------------------------------------------------- catalog


def registered_catalog(store: Path) -> dict[str, dict[str, Any]]:
    """Catalog entries (as workers publish them: ``{info, labels}``) of every validated version,
    under ``name@v``, and of every name, under ``name`` (its newest validated version)."""
    out: dict[str, dict[str, Any]] = {}
    for v in versions(store):
        ready = v.ready_info()
        if ready is None:
            continue
        info = dict(ready.get("info") or {})
        info.update(name=v.ref, version=v.ref, status="ready")
        entry = {"info": info, "labels": ready.get("labels") or []}
        out[v.ref] = entry
        out[v.name] = {"info": {**info, "name": v.name}, "labels": entry["labels"]}
    return out
