"""Typed configuration from the environment (prefix ``TIVIS_``), shared by API and worker."""

from __future__ import annotations

import base64
import binascii
import math
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def signing_key(secret: str) -> bytes:
    """The webhooks' HMAC key: ``whsec_<base64>`` decoded (Standard Webhooks), else the UTF-8
    bytes (here, so that ``Settings`` checks a secret exactly as signing reads it)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


class Settings(BaseSettings):
    """Every knob of the service; each field reads ``TIVIS_<NAME>`` (e.g. ``TIVIS_REDIS_URL``)."""

    # allow_inf_nan=False: no float setting takes inf or nan (a wait, a sleep or a Redis expiry
    # of inf fails only when it is used)
    model_config = SettingsConfigDict(env_prefix="TIVIS_", extra="ignore", allow_inf_nan=False)

    # Redis and keys
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for job records, artifacts and the Celery broker "
        "(redis://, rediss:// or unix:///path/to/socket)",
    )
    key_prefix: str = Field(default="tivis", description="prefix of every Redis key")
    ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="TTL of every Redis key (renewed as a job starts and ends); above "
        "TIVIS_HARD_TIME_LIMIT",
    )

    # API
    api_keys: str = Field(default="", description="comma-separated API keys; empty: no auth")
    admin_keys: str = Field(
        default="",
        description="comma-separated admin keys: they may register and delete models, see and "
        "cancel every key's jobs (and are valid API keys); with API keys set and no admin key, "
        "nobody may",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=2, ge=1, le=64, description="uvicorn worker processes")
    catalog_cache_seconds: float = Field(default=2.0, ge=0.0)
    max_page_size: int = Field(default=200, ge=1)
    enqueue: Literal["atomic", "send_task"] = Field(
        default="atomic",
        description="atomic: the job record and its Celery message are written in one Redis "
        "transaction (message captured from Celery at startup); send_task: Celery sends it",
    )

    # Worker
    queue: str = "gpu"
    models_dir: Path | None = Field(default=None, description="custom TorchScript models")
    model_store_dir: Path | None = Field(
        default=None,
        description="registered models (POST /models), a volume shared by the API and every "
        "worker; default <data_dir>/models",
    )
    max_model_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=1, description="largest model file POST /models takes"
    )
    weights_dir: Path | None = Field(default=None, description="extra torchvision weights folder")
    torch_home: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=False, description="bfloat16 autocast on CUDA")
    deterministic: bool = Field(
        default=True,
        description="CUDA: deterministic kernels, so the same spec and seed give the same bytes "
        "on the same GPU (worker.engine.determinism)",
    )
    channels_last: bool = Field(
        default=True, description="NHWC memory layout (faster on GPU and CPU)"
    )
    compile: bool = Field(default=False, description="torch.compile the model (CUDA)")
    tune_malloc: bool = Field(
        default=True,
        description="glibc keeps blocks up to 32 MiB and freed memory in the worker's heap, so "
        "each pass reuses warm pages (worker.malloc; the worker keeps its peak memory)",
    )
    pass_memory_mb: int = Field(
        default=0,
        ge=0,
        description="memory one pass through the model may take, MiB; 0: on CUDA the free "
        "memory times TIVIS_PASS_MEMORY_FRACTION, on the CPU 2048",
    )
    pass_memory_fraction: float = Field(
        default=0.5, gt=0.0, le=0.95, description="share of the free CUDA memory one pass may take"
    )
    soft_time_limit: int = Field(default=1800, ge=1, description="seconds; the job fails cleanly")
    hard_time_limit: int = Field(default=1900, ge=2, description="seconds; the process is killed")
    visibility_timeout: int | None = Field(
        default=None, description="broker redelivery after this many seconds; default hard + 60"
    )
    max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is failed")
    heartbeat_seconds: float = Field(
        default=5.0, ge=0.01, le=3600.0, description="worker heartbeat (and reaper pass) period"
    )
    cancel_check_seconds: float = Field(
        default=0.25, ge=0.01, le=3600.0, description="how often a job writes progress"
    )

    max_job_cost: int = Field(
        default=50_000_000_000,
        ge=1,
        description="largest estimated cost of a job in pixel-passes (specs/cost.py); above it "
        "a submission is refused with 422 naming what to reduce",
    )

    # Uploads (issue 4)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_upload_pixels: int = Field(default=40_000_000, ge=1)

    # Defenses (issue 9: connection limits, body limits, key scoping)
    max_queued_per_key: int = Field(
        default=10_000, ge=0, description="queued jobs one API key may have (0: no limit)"
    )
    redis_max_connections: int = Field(
        default=64, ge=2, le=10_000, description="Redis connections per API process (requests)"
    )
    max_event_streams: int = Field(
        default=1000, ge=0, le=100_000, description="open event streams per API process"
    )
    events_poll_seconds: float = Field(default=0.2, gt=0.0, le=10.0)
    max_json_bytes: int = Field(
        default=64 * 1024, ge=1024, description="largest JSON request body (413 above)"
    )
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0.0,
        le=86400.0,
        description="a request body must arrive within this (408)",
    )

    # Webhooks (issue 13; core/webhooks.py)
    webhook_secret: str = Field(
        default="",
        description="HMAC-SHA256 key of webhook signatures: whsec_<base64> (Standard Webhooks) or "
        "any other text (its UTF-8 bytes); empty: submissions naming a webhook are refused",
    )
    webhook_queue: str = Field(default="webhooks", description="Celery queue of deliveries")
    webhook_allow_private: bool = Field(
        default=False,
        description="allow receivers on private, loopback, link-local and other non-global "
        "addresses (checked at submission and again at every send)",
    )
    webhook_timeout: float = Field(default=10.0, gt=0.0, le=300.0, description="seconds per send")
    webhook_retry_schedule: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        description="seconds to wait before each retry (comma-separated); the default retries "
        "for 27.6 hours (8 attempts)",
    )
    webhook_per_host: int = Field(
        default=4, ge=1, le=1000, description="sends in flight to one receiver (host and port) at "
        "once; the others wait, so a slow receiver cannot take every thread of the worker",
    )  # fmt: skip
    webhook_progress_seconds: float = Field(
        default=5.0, gt=0.0, description="at most one progress event per job this often"
    )
    webhook_poll_seconds: float = Field(
        default=0.5, gt=0.0, le=60.0, description="how often the webhook worker looks for due "
        "deliveries",
    )  # fmt: skip
    # Artifact store (issue 10): files outside Redis
    artifacts_url: str = Field(
        default="",
        description="where artifacts go: file:///path or a path (default <data dir>/artifacts), "
        "or s3://bucket/prefix (S3-compatible, see the s3_* settings)",
    )
    s3_endpoint_url: str | None = Field(default=None, description="e.g. http://minio:9000")
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_create_bucket: bool = Field(default=False, description="create the bucket if missing")
    artifacts_cleanup_seconds: float = Field(
        default=3600.0, gt=0.0, description="how often a worker deletes expired artifacts"
    )

    # Embedded run
    data_dir: Path = Field(default=Path(".tivis"), description="embedded Redis data and socket")
    restart_backoff_seconds: float = Field(
        default=0.5,
        gt=0.0,
        le=3600.0,
        description="embedded run: first delay before restarting a process",
    )
    restart_backoff_max_seconds: float = Field(
        default=30.0,
        gt=0.0,
        le=3600.0,
        description="embedded run: the restart delay doubles up to this",
    )
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        if self.soft_time_limit >= self.hard_time_limit:
            raise ValueError("TIVIS_SOFT_TIME_LIMIT must be below TIVIS_HARD_TIME_LIMIT")
        if self.ttl_seconds <= self.hard_time_limit:
            raise ValueError(
                f"TIVIS_TTL_SECONDS ({self.ttl_seconds}) must exceed TIVIS_HARD_TIME_LIMIT "
                f"({self.hard_time_limit}), or a job's record could expire while it runs"
            )
        if self.effective_visibility_timeout <= self.hard_time_limit:
            raise ValueError(
                "TIVIS_VISIBILITY_TIMEOUT must exceed TIVIS_HARD_TIME_LIMIT, or a running job "
                "would be redelivered to a second worker"
            )
        return self

    @field_validator("models_dir", "model_store_dir", "weights_dir", "torch_home", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, v: object) -> object:
        """``TIVIS_MODELS_DIR=`` means no folder (the default), not the current directory."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, v: str) -> str:
        """A ``whsec_`` secret must decode as signing does (:func:`signing_key`) to a non-empty
        key."""
        if v.startswith("whsec_"):
            try:
                key = signing_key(v)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "TIVIS_WEBHOOK_SECRET: the part after whsec_ must be base64 (Standard "
                    "Webhooks), e.g. whsec_ followed by 24 or more random bytes in base64"
                ) from None
            if not key:
                raise ValueError("TIVIS_WEBHOOK_SECRET: whsec_ with an empty key")
        return v

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        parse_delays(v)
        return v

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """Seconds before each retry; ``len + 1`` attempts in all."""
        return parse_delays(self.webhook_retry_schedule)

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def admin_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.admin_keys.split(",") if k.strip())

    @property
    def model_store(self) -> Path:
        """Where registered models live: ``model_store_dir`` or ``<data_dir>/models``."""
        return self.model_store_dir or self.data_dir / "models"

    @property
    def broker_url(self) -> str:
        """The Redis URL in kombu's spelling (``unix://`` becomes ``redis+socket://``)."""
        if self.redis_url.startswith("unix://"):
            return "redis+socket://" + self.redis_url[len("unix://") :]
        return self.redis_url

    @property
    def effective_visibility_timeout(self) -> int:
        vt = self.visibility_timeout
        return vt if vt is not None else self.hard_time_limit + 60


def parse_delays(text: str) -> tuple[float, ...]:
    """``"5,300,1800"`` -> ``(5.0, 300.0, 1800.0)``; ``ValueError`` unless finite and >= 0."""
    out: list[float] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            msg = f"retry delays are seconds separated by commas, got {part!r}"
            raise ValueError(msg) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"retry delays must be finite and >= 0, got {part!r}")
        out.append(value)
    return tuple(out)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
