"""The paper's central claim, checked for real on the default model (efficientnet_lite0, CPU)."""

from __future__ import annotations

import pytest
import torch

from specs import OptimizeSpec, RandomViews
from worker.engine import optimize as O
from worker.engine import transforms as T
from worker.engine.images import decode_image, encode_png, flat_gray
from worker.engine.models import LoadedModel

pytestmark = pytest.mark.slow


def saved_and_reloaded(image: torch.Tensor) -> torch.Tensor:
    """The artifact users get: the 8-bit PNG, decoded again."""
    return decode_image(encode_png(image))[None]


def test_invariant_soccer_ball_survives_random_rotations_and_vanilla_does_not(
    lite: LoadedModel,
) -> None:
    target = torch.tensor([lite.info.resolve_target("soccer ball")])
    angles, scales = T.random_views(
        RandomViews(count=16, seed=2026, max_rotation=360.0, scale_min=0.8, scale_max=1.2)
    )
    invariant = O.visualize(lite, flat_gray([0], 224), target, OptimizeSpec())[0]
    vanilla = O.visualize(lite, flat_gray([0], 224), target, OptimizeSpec(method="vanilla"))[0]

    inv = saved_and_reloaded(invariant.image)
    van = saved_and_reloaded(vanilla.image)
    assert float(O.target_probs(lite, inv, target)[0]) >= 0.9
    assert float(O.target_probs(lite, van, target)[0]) >= 0.9  # both are confident at identity
    inv_views = float(O.view_probs(lite, inv, target, angles, scales).mean())
    van_views = float(O.view_probs(lite, van, target, angles, scales).mean())
    assert inv_views >= 0.5, inv_views
    assert van_views < 0.1, van_views
