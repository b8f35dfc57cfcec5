"""Tiny models exported in every format ``POST /models`` takes, with their metadata, and bad
files for the refusals. Random weights; small enough to validate in a second."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from tinymodel import TINY_LABELS, TinyCNN

SIZE = 64


def tiny_net(classes: int = len(TINY_LABELS), seed: int = 0) -> TinyCNN:
    torch.manual_seed(seed)
    net = TinyCNN(classes).eval()
    with torch.no_grad():
        net.head.weight.mul_(40.0)
    return net


def metadata(name: str, **over: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "input_size": SIZE,
        "zero": [127.5, 127.5, 127.5],
        "std": [63.75, 63.75, 63.75],
        "labels": TINY_LABELS,
    }
    meta.update(over)
    return meta


def export_program(path: Path, net: torch.nn.Module | None = None) -> Path:
    """``.pt2``: ``torch.export`` with a dynamic batch dimension."""
    from torch.export import Dim, export

    net = net or tiny_net()
    program = export(
        net, (torch.zeros(2, 3, SIZE, SIZE),), dynamic_shapes=({0: Dim("batch", max=1024)},)
    )
    torch.export.save(program, str(path))
    return path


def torchscript(path: Path, net: torch.nn.Module | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net or tiny_net()).save(str(path))
    return path


def torchvision_state(classes: int = len(TINY_LABELS)) -> dict[str, torch.Tensor]:
    """A random ``squeezenet1_1`` (the smallest torchvision classifier) with ``classes``."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=classes)
    return net.state_dict()


def state_dict(path: Path, classes: int = len(TINY_LABELS)) -> Path:
    torch.save(torchvision_state(classes), path)
    return path


def safetensors_file(path: Path, classes: int = len(TINY_LABELS)) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in torchvision_state(classes).items()}, str(path))
    return path


class _Payload:
    """Runs a shell command when unpickled: what a disguised pickle would do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/tivis-pwned",))


def pickle_payload(path: Path) -> Path:
    """A ``.pth`` made by ``torch.save`` whose "state dict" holds a pickled callable."""
    torch.save({"features.0.weight": torch.zeros(1), "evil": _Payload()}, path)
    return path


def nan_model(path: Path) -> Path:
    net = tiny_net()
    with torch.no_grad():
        net.head.bias.fill_(float("nan"))
    return torchscript(path, net)


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()
