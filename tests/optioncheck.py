"""The check every option of the optimizer (skip gradients, stochastic depth, the BatchNorm
prior) passes on the real default model (``tests/engine/conftest.py`` gives it as a fixture)."""

from __future__ import annotations

from typing import Any

import torch

from specs import OptimizeSpec
from worker.engine import optimize as O
from worker.engine.images import encode_png, flat_gray
from worker.engine.models import LoadedModel


class OptionCheck:
    """``invariant+`` cut short (2 quarter turns of 3 steps, 2 views per step) on lite0, with
    optimizer settings (or, with ``section="augment"``, step views' settings) given per call."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def spec(self, settings: dict[str, Any], section: str = "optimizer") -> OptimizeSpec:
        body: dict[str, Any] = {
            "method": "invariant+",
            "schedule": [{"op": "rotate", "value": 90.0, "repeat": 2}],
            "optimizer": {"max_steps_per_round": 3},
            "augment": {"views": 2},
            "final_round": False,
        }
        body[section] = {**body[section], **settings}
        return OptimizeSpec.model_validate(body)

    def run(
        self, on: dict[str, Any], off: dict[str, Any], section: str = "optimizer"
    ) -> tuple[O.VisResult, O.VisResult]:
        """Two targets batched with the option ``on`` give the bytes of one-by-one runs, the
        option changes the picture (against ``off``), and the target probability goes up.
        Returns the one-by-one picture with the option and the one without."""
        targets, x0 = torch.tensor([805, 1]), flat_gray([0, 0], 224)
        batched = O.visualize(self.model, x0, targets, self.spec(on, section))
        again = O.visualize(self.model, x0[1:], targets[1:], self.spec(on, section))[0]
        assert encode_png(again.image) == encode_png(batched[1].image)
        plain = O.visualize(self.model, x0[1:], targets[1:], self.spec(off, section))[0]
        assert encode_png(plain.image) != encode_png(again.image)
        assert again.q_final > float(O.target_probs(self.model, x0[1:], targets[1:])[0])
        return again, plain
