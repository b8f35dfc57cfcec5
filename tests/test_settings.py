"""Settings from real environment values: what would fail only when used (a wait of inf, a Redis
expiry of 0 ms, a key that does not decode) is refused at start with the variable named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings


def _refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> str:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    return str(err.value)


def test_the_ttl_must_exceed_the_hard_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _refused(monkeypatch, "TIVIS_TTL_SECONDS", "1900")
    assert "TIVIS_TTL_SECONDS (1900) must exceed TIVIS_HARD_TIME_LIMIT (1900)" in text
    monkeypatch.setenv("TIVIS_HARD_TIME_LIMIT", "200")
    monkeypatch.setenv("TIVIS_SOFT_TIME_LIMIT", "100")
    monkeypatch.setenv("TIVIS_TTL_SECONDS", "201")
    assert Settings().ttl_seconds == 201
