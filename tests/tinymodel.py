"""A tiny random-weight CNN saved as a custom model (TorchScript + JSON sidecar), for fast tests.

Used by engine, pipeline and integration tests alike: the worker loads it through the registry's
custom-model path exactly as it would load a user's model.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv(3→8, stride 2) → ReLU → conv(8→16, stride 2) → ReLU → global mean → linear(16→K)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


TINY_LABELS = [f"class {i}" for i in range(9)] + ["soccer ball"]


def make_tiny_model(
    directory: Path | str, name: str = "tiny", size: int = 64, seed: int = 0
) -> Path:
    """Write ``NAME.pt`` (TorchScript) and ``NAME.json`` into ``directory``; return the .pt path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = TinyCNN(len(TINY_LABELS)).eval()
    with torch.no_grad():  # a sharper head, so that q_C can reach 0.99 within a few dozen steps
        net.head.weight.mul_(40.0)
    path = d / f"{name}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
        torch.jit.script(net).save(str(path))
    (d / f"{name}.json").write_text(
        json.dumps(
            {
                "input_size": size,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.25, 0.25, 0.25],
                "labels": TINY_LABELS,
                "architecture": "TinyCNN (tests)",
            }
        )
    )
    return path
