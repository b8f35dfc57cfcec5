"""Settings from real environment values: what would fail only when used (a wait of inf, a Redis
expiry of 0 ms, a key that does not decode) is refused at start with the variable named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core import webhooks
from core.settings import Settings


def _refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> str:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    return str(err.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TIVIS_HEARTBEAT_SECONDS", "inf"),
        ("TIVIS_HEARTBEAT_SECONDS", "nan"),
        ("TIVIS_HEARTBEAT_SECONDS", "1e-5"),
        ("TIVIS_HEARTBEAT_SECONDS", "1e300"),
        ("TIVIS_CANCEL_CHECK_SECONDS", "inf"),
        ("TIVIS_CANCEL_CHECK_SECONDS", "1e-5"),
        ("TIVIS_BODY_TIMEOUT_SECONDS", "inf"),
        ("TIVIS_RESTART_BACKOFF_SECONDS", "inf"),
        ("TIVIS_RESTART_BACKOFF_MAX_SECONDS", "inf"),
        ("TIVIS_RESTART_BACKOFF_MAX_SECONDS", "1e300"),
        ("TIVIS_EVENTS_POLL_SECONDS", "nan"),
        ("TIVIS_ARTIFACTS_CLEANUP_SECONDS", "inf"),
        ("TIVIS_CATALOG_CACHE_SECONDS", "inf"),
        ("TIVIS_WEBHOOK_PROGRESS_SECONDS", "nan"),
    ],
)
def test_seconds_must_be_finite_and_in_range(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    assert var.removeprefix("TIVIS_").lower() in _refused(monkeypatch, var, value)


def test_the_smallest_and_largest_heartbeat_work(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, seconds in (("0.01", 0.01), ("3600", 3600.0)):
        monkeypatch.setenv("TIVIS_HEARTBEAT_SECONDS", value)
        assert Settings().heartbeat_seconds == seconds


def test_the_ttl_must_exceed_the_hard_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    text = _refused(monkeypatch, "TIVIS_TTL_SECONDS", "1900")
    assert "TIVIS_TTL_SECONDS (1900) must exceed TIVIS_HARD_TIME_LIMIT (1900)" in text
    monkeypatch.setenv("TIVIS_HARD_TIME_LIMIT", "200")
    monkeypatch.setenv("TIVIS_SOFT_TIME_LIMIT", "100")
    monkeypatch.setenv("TIVIS_TTL_SECONDS", "201")
    assert Settings().ttl_seconds == 201


@pytest.mark.parametrize("var", ["TIVIS_MODELS_DIR", "TIVIS_MODEL_STORE_DIR", "TIVIS_WEIGHTS_DIR",
                                 "TIVIS_TORCH_HOME"])  # fmt: skip
def test_an_empty_folder_setting_means_the_default(
    monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    monkeypatch.setenv(var, "")
    s = Settings()
    assert getattr(s, var.removeprefix("TIVIS_").lower()) is None
    assert s.model_store == Path(".tivis") / "models"


@pytest.mark.parametrize("secret", ["whsec_not-base64!", "whsec_QUJD=x", "whsec_", "whsec_!!"])
def test_a_whsec_secret_must_decode_to_a_key(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    assert "TIVIS_WEBHOOK_SECRET" in _refused(monkeypatch, "TIVIS_WEBHOOK_SECRET", secret)


@pytest.mark.parametrize("secret", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "plain text", ""])
def test_an_accepted_secret_signs(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("TIVIS_WEBHOOK_SECRET", secret)
    s = Settings()
    if s.webhook_secret:
        assert webhooks.sign(s.webhook_secret, "msg_1", 1614265330, b"{}").startswith("v1,")
