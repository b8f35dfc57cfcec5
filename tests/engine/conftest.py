"""Fixtures of the engine tests of the optimizer's options: the real default model and the
check every option passes on it (``tests/optioncheck.py``)."""

from __future__ import annotations

import pytest
from optioncheck import OptionCheck

from worker.engine.models import LoadedModel, Registry


@pytest.fixture(scope="module")
def lite() -> LoadedModel:
    return Registry().load("efficientnet_lite0")


@pytest.fixture
def option_check(lite: LoadedModel) -> OptionCheck:
    return OptionCheck(lite)
