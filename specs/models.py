"""Registered models and model comparisons: the metadata of ``POST /models``, the validation job
that a registration queues, and ``POST /compare``.

Importable without torch. A model is registered as a file (``.pt2`` torch.export program, ``.pt``
TorchScript, ``.pth`` or ``.safetensors`` state dict of a ``torchvision.models`` classification
architecture) and :class:`ModelMetadata`, which says how pixels become the model's input: input
size, normalization in pixel units (0..255), resize policy and labels.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from specs import (
    MAX_MODELS,
    MAX_TARGETS,
    OptimizeSpec,
    RandomViews,
    Target,
    _Frozen,
    distinct_models,
)

NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}$"
"""Model names: lower case letter first, then letters, digits, ``_ . -``; at most 63 characters
(``@`` is kept for versions: ``name@2``)."""
REF_PATTERN = r"^[a-z][a-z0-9_.-]{0,62}@[1-9][0-9]{0,8}$"
NAME_RE = re.compile(NAME_PATTERN)
REF_RE = re.compile(REF_PATTERN)
VERSION_RE = re.compile(r"[0-9]{1,9}")
MAX_LABELS = 100_000
IMAGENET_CLASSES = 1000

ModelFormat = Literal["export", "torchscript", "state_dict", "safetensors"]
EXTENSIONS: dict[str, ModelFormat] = {
    ".pt2": "export",
    ".pt": "torchscript",
    ".pth": "state_dict",
    ".safetensors": "safetensors",
}
"""File name extension -> format. ``.pt2``: ``torch.export.save``; ``.pt``: TorchScript
(``torch.jit.save``); ``.pth``: a state dict saved with ``torch.save`` (read with
``weights_only=True``); ``.safetensors``: a state dict (``safetensors.torch.save_file``)."""
FILE_NAMES: dict[ModelFormat, str] = {fmt: f"model{ext}" for ext, fmt in EXTENSIONS.items()}


def split_ref(name: str) -> tuple[str, int | None]:
    """``"net@2"`` -> ``("net", 2)``; ``"net"`` -> ``("net", None)``; a version that is not
    1 to 9 ASCII digits (``"net@²"``) is no version: ``("net@²", None)``, a name nothing has."""
    base, sep, version = name.partition("@")
    if sep and VERSION_RE.fullmatch(version):
        return base, int(version)
    return name, None


Color = tuple[float, float, float]


class ModelMetadata(_Frozen):
    """How a registered model sees pixels, and what its outputs mean.

    Normalization is ``input = (pixel - mean) / std`` per channel with ``mean`` and ``std`` in
    pixel units (0..255). Instead of ``mean`` you may give ``zero``, the pixel color that becomes
    an all-zero input (the same thing). ``std`` defaults to 255 (inputs in units of full scale).
    """

    name: str = Field(pattern=NAME_PATTERN, description="lower case, e.g. my_resnet")
    architecture: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z][a-z0-9_]*$",
        description="a torchvision.models classification architecture (e.g. resnet18); required "
        "for .pth and .safetensors state dicts",
    )
    input_size: int = Field(ge=16, le=1024, description="input side in pixels")
    mean: Color | None = Field(default=None, description="pixel units (0..255)")
    zero: Color | None = Field(default=None, description="pixel color of an all-zero input")
    std: Color = Field(default=(255.0, 255.0, 255.0), description="pixel units, > 0")
    resize_to: int | None = Field(
        default=None,
        ge=16,
        le=2048,
        description="shorter side resized to this, then the center input_size square cropped; "
        "none: the whole image resized to input_size × input_size",
    )
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    labels: list[str] | Literal["imagenet"] = Field(
        description='class labels in output order, or "imagenet" (the 1,000 ImageNet-1k classes)'
    )
    description: str = Field(default="", max_length=1000)

    @field_validator("mean", "zero", "std")
    @classmethod
    def _color(cls, v: Color | None) -> Color | None:
        if v is None:
            return v
        for c in v:
            if not math.isfinite(c) or not -1024.0 <= c <= 1024.0:
                raise ValueError(f"values must be finite and within ±1024, got {list(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: Color) -> Color:
        if any(c <= 0 for c in v):
            raise ValueError(f"std must be > 0 in every channel, got {list(v)}")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str):
            return v
        if not 1 <= len(v) <= MAX_LABELS:
            raise ValueError(f"give between 1 and {MAX_LABELS} labels, got {len(v)}")
        bad = [i for i, s in enumerate(v) if not s.strip() or len(s) > 200]
        if bad:
            raise ValueError(f"labels must be 1 to 200 characters, not blank (index {bad[0]})")
        lowered = [s.strip().lower() for s in v]
        dup = sorted({s for s in lowered if lowered.count(s) > 1})
        if dup:
            raise ValueError(f"labels must be distinct (case-insensitive): {', '.join(dup[:5])}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        if self.mean is not None and self.zero is not None and self.mean != self.zero:
            raise ValueError("give mean or zero (they are the same thing), not two values")
        if self.resize_to is not None and self.resize_to < self.input_size:
            raise ValueError(
                f"resize_to ({self.resize_to}) must be at least input_size ({self.input_size})"
            )
        return self

    @property
    def pixel_mean(self) -> Color:
        """The normalization's mean (= the zero color), pixel units; 0 when neither is given."""
        return self.mean or self.zero or (0.0, 0.0, 0.0)

    @property
    def num_classes(self) -> int:
        return IMAGENET_CLASSES if self.labels == "imagenet" else len(self.labels)


class ValidateModelSpec(_Frozen):
    """The job a registration queues: a worker loads ``ref`` from the model store, checks it and
    marks it ready (or removes it). Written by the API, never by clients."""

    ref: str = Field(pattern=REF_PATTERN, description="name@version")
    format: ModelFormat
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1)
    steps: int = Field(default=3, ge=1, le=20, description="timed forward+backward steps")


class CompareSpec(OptimizeSpec):
    """``POST /compare``: each target visualized by each model (the grid of Figure 5), and every
    visualization classified by every model (the cross-model matrix: the target's probability
    and rank), with each model's zero color."""

    models: list[str] = Field(min_length=2, max_length=MAX_MODELS)
    targets: list[Target] = Field(min_length=1, max_length=MAX_TARGETS // 4)
    initial_gray: int = Field(default=0, ge=0, le=255)
    views: RandomViews = Field(default_factory=RandomViews)
    top_k: int = Field(default=5, ge=1, le=20, description="top predictions kept per cell")

    @field_validator("models")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return distinct_models(v)
