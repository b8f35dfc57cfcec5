"""Loading a registered model file into a network, per format, without unpickling anything.

- ``export``: a ``torch.export`` program (``.pt2``, ``torch.export.save``); its module is run as
  is. A program exported with a fixed batch size is run one chunk of that size at a time.
- ``torchscript``: ``torch.jit.load`` (``.pt``), TorchScript's own loader.
- ``state_dict``: a ``torchvision.models`` classification architecture by name, built with
  ``num_classes`` outputs and given a state dict read with ``torch.load(weights_only=True)``.
- ``safetensors``: the same with the state dict read by ``safetensors.torch.load_file``.

``torch.export.load`` would unpickle some archive members with ``weights_only=False``; it runs
here with every ``torch.load`` forced to ``weights_only=True`` and Python's ``pickle.loads``
refused (:func:`_weights_only`), so a program is tensors and a graph, never objects.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("export", "torchscript", "state_dict", "safetensors")


class ModelFileError(ValueError):
    """A registered file that cannot become a working classifier; the message names why."""


def classification_architectures() -> list[str]:
    """Every classification architecture of ``torchvision.models`` (e.g. ``resnet18``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


class _RefusePickle:
    @staticmethod
    def loads(*_: Any, **__: Any) -> Any:
        raise ModelFileError("the program holds a pickled Python object; refused")

    def __getattr__(self, name: str) -> Any:
        import pickle

        return getattr(pickle, name)


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """``torch.load`` with ``weights_only=True`` whatever the caller asks, no ``pickle.loads``
    in torch.export's archive reader. Only for the duration of one load."""
    from torch.export.pt2_archive import _package

    original = torch.load

    @functools.wraps(original)
    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    saved_pickle = getattr(_package, "pickle", None)
    torch.load = load
    setattr(_package, "pickle", _RefusePickle())  # noqa: B010 (a module global, for one load)
    try:
        yield
    finally:
        torch.load = original
        if saved_pickle is not None:
            setattr(_package, "pickle", saved_pickle)  # noqa: B010


class Exported(nn.Module):
    """An exported program's module as a plain module: ``train``/``eval`` (which exported
    modules refuse) only set the flag here; the program's graph is fixed at export."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def train(self, mode: bool = True) -> Exported:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class ChunkedBatch(nn.Module):
    """Runs a network exported for a fixed batch size ``batch`` on any batch: chunks of
    ``batch`` (the last one padded with copies of its first image, the padding dropped)."""

    def __init__(self, net: nn.Module, batch: int) -> None:
        super().__init__()
        self.net = net
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.batch:
            return self.net(x)  # type: ignore[no-any-return]
        outs = []
        for start in range(0, x.shape[0], self.batch):
            part = x[start : start + self.batch]
            n = part.shape[0]
            if n < self.batch:
                part = torch.cat([part, part[:1].expand(self.batch - n, *part.shape[1:])])
            outs.append(self.net(part)[:n])
        return torch.cat(outs)


def _static_batch(program: Any) -> int | None:
    """The fixed batch size of an exported program's first input, ``None`` when dynamic."""
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        spec = node.name
        if spec in program.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and val.dim() >= 1:
                first = val.shape[0]
                return int(first) if isinstance(first, int) else None
            return None
    return None


def _state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state dict (also under ``state_dict`` / ``model``; a
    ``module.`` prefix of DataParallel removed)."""
    if isinstance(obj, dict) and len(obj) == 1:
        ((key, inner),) = obj.items()
        if key in ("state_dict", "model") and isinstance(inner, dict):
            obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError("the file does not hold a state dict (names -> tensors)")
    out = {str(k): v for k, v in obj.items()}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def _torchvision_net(architecture: str | None, num_classes: int) -> nn.Module:
    if not architecture:
        raise ModelFileError("a state dict needs metadata 'architecture' (e.g. resnet18)")
    known = classification_architectures()
    if architecture not in known:
        import difflib

        close = difflib.get_close_matches(architecture, known, n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ModelFileError(
            f"{architecture!r} is not a torchvision.models classification architecture{hint}"
        )
    import torchvision

    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if architecture == "inception_v3":
        kwargs.update(aux_logits=True, transform_input=False, init_weights=False)
    if architecture == "googlenet":
        kwargs.update(aux_logits=False, transform_input=False, init_weights=False)
    net: nn.Module = torchvision.models.get_model(architecture, **kwargs)
    return net


def load_network(
    path: Path, fmt: str, *, architecture: str | None = None, num_classes: int = 1000
) -> nn.Module:
    """The network in ``path`` (on the CPU, not yet in eval mode).

    Raises:
        ModelFileError: the file is not of ``fmt``, holds objects rather than tensors, or its
            state dict does not fit the architecture.
    """
    try:
        if fmt == "export":
            with _weights_only():
                program = torch.export.load(str(path))
            net: nn.Module = Exported(program.module())
            batch = _static_batch(program)
            return ChunkedBatch(net, batch) if batch is not None else net
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
                return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call,no-any-return]
        if fmt == "state_dict":
            state = _state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif fmt == "safetensors":
            from safetensors.torch import load_file

            state = _state_dict(load_file(str(path), device="cpu"))
        else:
            raise ModelFileError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    except ModelFileError:
        raise
    except Exception as exc:
        what = {"export": "a torch.export program", "torchscript": "a TorchScript module",
                "state_dict": "a weights-only state dict",
                "safetensors": "a safetensors file"}.get(fmt, fmt)  # fmt: skip
        raise ModelFileError(f"could not load {what}: {type(exc).__name__}: {exc}") from exc
    net = _torchvision_net(architecture, num_classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        text = str(exc).replace("\n\t", " ").replace("\n", " ")
        raise ModelFileError(
            f"the state dict does not fit torchvision {architecture} with {num_classes} "
            f"classes: {text[:600]}"
        ) from exc
    return net
