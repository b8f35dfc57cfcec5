"""The multi-model specs refuse a model named twice (one check, ``specs.distinct_models``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from specs import VisualizeSpec
from specs.classify import ClassifySpec
from specs.models import CompareSpec


@pytest.mark.parametrize(
    "make",
    [
        lambda: CompareSpec(models=["tiny", "tiny"], targets=[1]),
        lambda: ClassifySpec(models=["tiny", "tiny"]),
        lambda: VisualizeSpec(model=["tiny", "x", "tiny"], targets=[1]),
    ],
)
def test_a_model_named_twice_is_refused(make: Any) -> None:
    with pytest.raises(ValidationError, match="each model may appear once, got tiny"):
        make()
