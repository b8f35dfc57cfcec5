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


def test_invariant_pictures_survive_random_rotations_and_vanilla_ones_do_not(
    lite: LoadedModel,
) -> None:
    """Three classes, because one picture's figure under the views is chaotic: the same spec
    gave the soccer ball 0.80 at one torch thread and 0.30 at two on one CPU (the summation
    order differs), and 0.26–0.98 over five classes; vanilla's pictures stayed at most 0.002."""
    angles, scales = T.random_views(
        RandomViews(count=16, seed=2026, max_rotation=360.0, scale_min=0.8, scale_max=1.2)
    )
    inv_views, van_views = [], []
    for name in ("soccer ball", "daisy", "king crab"):
        target = torch.tensor([lite.info.resolve_target(name)])
        start = flat_gray([0], 224)
        invariant = O.visualize(lite, start, target, OptimizeSpec())[0]
        vanilla = O.visualize(lite, start, target, OptimizeSpec(method="vanilla"))[0]
        inv = saved_and_reloaded(invariant.image)
        van = saved_and_reloaded(vanilla.image)
        assert float(O.target_probs(lite, inv, target)[0]) >= 0.9, name
        assert float(O.target_probs(lite, van, target)[0]) >= 0.9, name  # both sure at identity
        inv_views.append(float(O.view_probs(lite, inv, target, angles, scales).mean()))
        van_views.append(float(O.view_probs(lite, van, target, angles, scales).mean()))
    assert max(van_views) < 0.02, van_views
    assert min(inv_views) >= 0.1, inv_views  # every invariant picture: 50 times vanilla's or more
    assert sum(inv_views) / 3 >= 0.35, inv_views
