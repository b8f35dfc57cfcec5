"""The class direction objective (Olah et al. 2017, "Feature Visualization"; Lucid's
``dot * cossim ** power``): the target's logit before its bias, ``w_c · f``, times the cosine of
the penultimate features ``f`` with the class weights ``w_c`` to the power ``power`` (at least
``FLOOR``), so that the picture raises the class by features along its direction rather than by
features of any kind that happen to add up.

The features are the input of the model's last ``nn.Linear`` (its classifier), read by a forward
hook from the pass the step makes anyway. Nets without one (exported programs) keep the logit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

FLOOR = 0.1
"""The cosine's floor in the product: a picture that starts against the class direction still
climbs (the gradient of ``dot`` scaled), instead of lowering its cosine."""


@dataclass
class Head:
    """The classifier's weights and the features of the last pass through it."""

    fc: nn.Linear | None
    feats: torch.Tensor | None = None

    def objective(self, logits: torch.Tensor, targets: torch.Tensor, power: float) -> torch.Tensor:
        """(N,) the objective of each row's target (N,) from the last pass's features; the
        target logit when there is no head or no features."""
        if self.fc is None or self.feats is None:
            return logits.gather(1, targets[:, None])[:, 0]
        f, self.feats = self.feats.float()[: logits.shape[0]].flatten(1), None
        w = self.fc.weight[targets].float()
        dot = (f * w).sum(dim=1)
        cos = dot / (f.norm(dim=1) * w.norm(dim=1)).clamp(min=1e-12)
        c = cos.clamp(min=FLOOR)
        scale: torch.Tensor = (c / c.detach()) ** power  # 1: dot's value, the product's slope
        return dot * scale


def _last_linear(net: object) -> nn.Linear | None:
    if not isinstance(net, nn.Module):
        return None
    found = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


@contextmanager
def head(net: object, on: bool) -> Iterator[Head]:
    """Within the block (when ``on``), each forward pass keeps the classifier's input for
    ``Head.objective``; the hook is removed on exit."""
    fc = _last_linear(net) if on else None
    h = Head(fc)
    if fc is None:
        yield h
        return

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            h.feats = inp[0]

    handle = fc.register_forward_pre_hook(hook)
    try:
        yield h
    finally:
        handle.remove()
