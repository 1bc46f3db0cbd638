"""Process settings, read once from the environment at start.

Every setting is an environment variable of the same name (case-insensitive). An invalid value
stops the process at start with one line naming the variable (see `load_settings`). Each
scheduler reads its own group (`settings.post_scheduler.interval_s`, ...), built from those variables.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from geniehelper.crypto import CredentialCipher


class QueueSettings(BaseModel):
    """One queue's worker settings. Queues are configuration: `geniehelper worker NAME` for any."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concurrency: int = Field(ge=1, le=1000, description="Jobs at once per worker process.")
    role: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,39}$", description="Health role.")
    # Fair: creators' jobs reach Redis through the dispatcher, round-robin across creators, at most
    # `window` waiting there at a time, so one creator's backlog waits in PostgreSQL, not in front
    # of everyone else's jobs.
    fair: bool = False
    window: int = Field(default=50, ge=1, le=100_000, description="Fair queue: dispatches waiting in Redis at most.")

    def role_for(self, queue: str) -> str:
        return self.role or ("worker" if queue == "default" else f"{queue}_worker")


# Each scheduler's settings, as it reads them: `settings.post_scheduler.interval_s`. The environment
# variables stay flat fields of Settings (POST_SCHEDULER_INTERVAL_S, ...): their names are an ops
# contract, and pydantic-settings would read a nested model only from POST_SCHEDULER__INTERVAL_S or
# JSON. A group is a frozen view of those fields, built when asked for.
@dataclass(frozen=True)
class PostSchedulerSettings:
    interval_s: float  # POST_SCHEDULER_INTERVAL_S: the safety-net poll (NOTIFY wakes it for each due post)
    batch: int  # POST_DISPATCH_BATCH: posts claimed per query
    max_lateness_s: float  # POST_MAX_LATENESS_S
    requeue_after_s: float  # POST_REQUEUE_AFTER_S


@dataclass(frozen=True)
class OutboxRelaySettings:
    interval_s: float  # OUTBOX_RELAY_INTERVAL_S
    grace_s: float  # OUTBOX_RELAY_GRACE_S


@dataclass(frozen=True)
class DispatcherSettings:
    interval_s: float  # DISPATCHER_INTERVAL_S


@dataclass(frozen=True)
class FailureSpikeSettings:
    window_s: float
    min_failures: int
    ratio: float


@dataclass(frozen=True)
class JobMonitorSettings:
    interval_s: float
    dead_window_s: float
    queue_age_s: float
    failure_spike: FailureSpikeSettings
    expected_roles: tuple[str, ...]
    webhook_url: str | None
    webhook_secret: str | None
    webhook_retry_max_s: float


@dataclass(frozen=True)
class SegmentEvaluatorSettings:
    interval_s: float  # SEGMENT_EVALUATOR_INTERVAL_S: the poll (a rules change wakes it at once)
    batch: int  # SEGMENT_EVALUATION_BATCH: segments claimed per query
    stale_after_s: float  # SEGMENT_STALE_AFTER_S
    requeue_after_s: float  # SEGMENT_REQUEUE_AFTER_S


@dataclass(frozen=True)
class FanScorerSettings:
    interval_s: float  # FAN_SCORER_INTERVAL_S
    batch: int  # FAN_SCORER_BATCH: creators claimed per query
    stale_after_s: float  # FAN_SCORES_STALE_AFTER_S
    requeue_after_s: float  # FAN_SCORER_REQUEUE_AFTER_S


@dataclass(frozen=True)
class ScrapeSchedulerSettings:
    interval_s: float  # SCRAPE_SCHEDULER_INTERVAL_S: how often due connections are looked for
    batch: int  # SCRAPE_DISPATCH_BATCH: connections claimed per query
    default_cadence_s: float  # SCRAPE_INTERVAL_S: a connection's scrape cadence for a tier not listed
    tier_cadence_s: dict[str, float]  # SCRAPE_TIER_INTERVALS_S: cadence per creator tier
    auth_expired_cadence_s: float  # SCRAPE_AUTH_EXPIRED_INTERVAL_S: health checks of auth-expired connections

    def cadence_s(self, tier: str) -> float:
        return self.tier_cadence_s.get(tier, self.default_cadence_s)


@dataclass(frozen=True)
class JobRetentionSettings:
    interval_s: float  # JOB_RETENTION_INTERVAL_S
    older_than_s: float  # JOB_RETENTION_S


# default: time-critical (publishing), waiting on platforms' HTTP answers: 50 at once, so that
# concurrent deliveries' record writes share statements (docs/jobs.md); bulk: sync, deliveries,
# imports; media: processing, which the original ran one at a time (its parallel jobs exhausted
# 16 GB of RAM): here 4 is an upper bound, MEDIA_MEMORY_BUDGET_MB decides (runtime.admission).
DEFAULT_QUEUES: dict[str, dict[str, object]] = {
    "default": {"concurrency": 50},
    "bulk": {"concurrency": 10, "fair": True},
    "media": {"concurrency": 4},
}


class WebToken(BaseModel):
    """One API token (WEB_TOKENS): `service` may enqueue, `read` may read, `admin` may do everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    token: str = Field(min_length=24, repr=False)
    role: Literal["service", "read", "admin"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Servers. Unset: the embedded stack under DATA_DIR is used (see geniehelper.embedded).
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL 16 URL schedulers, the CLI and services log in with (geniehelper_login: README, "
        "Production roles).",
    )
    worker_database_url: str | None = Field(
        default=None,
        description="The URL workers log in with (geniehelper_worker_login: no system role; default: DATABASE_URL).",
    )
    migrate_database_url: str | None = Field(
        default=None, description="The schema owner's URL, for `geniehelper migrate` only (default: DATABASE_URL)."
    )
    redis_url: str | None = Field(
        default=None, description="Redis-compatible server URL: redis://, rediss:// or unix://."
    )

    @field_validator("database_url", "migrate_database_url", "worker_database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # unset (or empty): the embedded stack
        parts = urlsplit(value)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("expected a postgresql:// (or postgres://) URL")
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts and not parse_qs(parts.query).get("host"):
            raise ValueError("no host: give one (postgresql://user@host:5432/db) or a socket directory (?host=/run/pg)")
        # One host: its port must be a number (`.port` raises ValueError); multi-host URLs are left to asyncpg.
        if "," not in hosts and hosts and parts.port == 0:
            raise ValueError("port 0")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("no socket path (unix:///path/to/redis.sock)")
        else:
            if not parts.hostname:
                raise ValueError("no host (redis://host:6379/0)")
            if parts.port == 0:  # `.port` raises ValueError for a port that is not a number in range
                raise ValueError("port 0")
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("the path must be a database number (redis://host:6379/0)")
        if any(not db.isdigit() for db in parse_qs(parts.query).get("db", [])):
            raise ValueError("db= must be a database number")
        return value

    data_dir: Path = Field(
        default=Path(".data"), description="Where the embedded servers keep their data (git-ignored)."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: readable console in a terminal, JSON lines otherwise."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Pools.
    db_pool_min_size: int = Field(default=1, ge=0, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)

    # Schedulers, grouped per scheduler; each reads its group (`post_scheduler`, ... below).
    scheduler_jitter_s: float = Field(
        default=1.0, ge=0, le=3_600,
        description="Random extra delay per tick, so replicas do not align (at most a tenth of the interval).",
    )
    # post_scheduler (publish_post checks post_max_lateness_s again when it runs).
    post_scheduler_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    post_dispatch_batch: int = Field(default=1000, ge=1, le=50_000)
    post_max_lateness_s: float = Field(
        default=3600.0, gt=0, description="A post overdue by more than this is marked missed, not published."
    )
    post_requeue_after_s: float = Field(
        default=30.0, gt=0,
        description="A post queued or publishing with no active publish_post job, not claimed or started for"
        " this long, is dispatched again.",
    )
    # outbox_relay.
    outbox_relay_interval_s: float = Field(default=5.0, gt=0, le=3_600)
    outbox_relay_grace_s: float = Field(
        default=10.0, ge=0, le=3_600, description="Age before an unpushed job record counts as orphaned."
    )
    # dispatcher.
    dispatcher_interval_s: float = Field(
        default=0.1, gt=0, le=60, description="How often the dispatcher tops up the fair queues."
    )
    # job_monitor and its alerts (docs/operations.md).
    job_monitor_interval_s: float = Field(
        default=5.0, gt=0, le=600, description="job_monitor's interval: stalled and lost jobs re-driven, alerts kept."
    )
    alert_dead_window_s: float = Field(
        default=86_400.0, gt=0, description="Jobs failed for good within this window (and not run again) are an alert."
    )
    alert_queue_age_s: float = Field(default=300.0, gt=0, description="Due jobs waiting longer than this are an alert.")
    alert_failure_spike_window_s: float = Field(default=300.0, gt=0)
    alert_failure_spike_min: int = Field(default=10, ge=1, description="Failures in the window before a spike counts.")
    alert_failure_spike_ratio: float = Field(default=0.5, gt=0, le=1, description="Share of finished jobs that failed.")
    alert_expected_roles: list[str] = Field(
        default=["worker", "scheduler"], description="Roles that must have a live process (health keys)."
    )
    # A secret: Slack-style webhook URLs carry their token in the path.
    alert_webhook_url: SecretStr | None = Field(default=None, description="Slack-compatible webhook for alerts.")
    alert_webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key signing each POST.")
    alert_retry_max_s: float = Field(default=300.0, gt=0, description="Longest wait between delivery attempts.")
    # job_retention.
    job_retention_interval_s: float = Field(default=600.0, gt=0, le=86_400, description="job_retention's interval.")
    job_retention_s: float = Field(
        default=30 * 86_400.0, ge=3_600, description="Finished job records older than this are pruned."
    )

    # segment_evaluator (docs/segments.md).
    segment_evaluator_interval_s: float = Field(
        default=30.0, gt=0, le=86_400, description="segment_evaluator's poll; a rules change wakes it at once."
    )
    segment_evaluation_batch: int = Field(default=500, ge=1, le=50_000)
    segment_stale_after_s: float = Field(
        default=3_600.0, gt=0, description="An active segment evaluated longer ago than this is evaluated again."
    )
    segment_requeue_after_s: float = Field(
        default=600.0, gt=0,
        description="A segment claimed this long ago and still not evaluated (its job lost, or its rules refused) is"
        " claimed again.",
    )

    # fan_scorer (docs/scoring.md).
    fan_scorer_interval_s: float = Field(default=300.0, gt=0, le=86_400, description="fan_scorer's interval.")
    fan_scorer_batch: int = Field(default=500, ge=1, le=50_000)
    fan_scores_stale_after_s: float = Field(
        default=86_400.0, gt=0, description="A creator whose fans were scored longer ago than this is scored again."
    )
    fan_scorer_requeue_after_s: float = Field(
        default=3_600.0, gt=0, description="A creator claimed this long ago and still not scored is claimed again."
    )

    @property
    def fan_scorer(self) -> FanScorerSettings:
        return FanScorerSettings(
            interval_s=self.fan_scorer_interval_s, batch=self.fan_scorer_batch,
            stale_after_s=self.fan_scores_stale_after_s, requeue_after_s=self.fan_scorer_requeue_after_s,
        )  # fmt: skip

    @property
    def segment_evaluator(self) -> SegmentEvaluatorSettings:
        return SegmentEvaluatorSettings(
            interval_s=self.segment_evaluator_interval_s, batch=self.segment_evaluation_batch,
            stale_after_s=self.segment_stale_after_s, requeue_after_s=self.segment_requeue_after_s,
        )  # fmt: skip

    # scrape_scheduler and the scrape / fan sync jobs (docs/sync.md). The original scraped every 6 h;
    # higher tiers are scraped more often.
    scrape_scheduler_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    scrape_dispatch_batch: int = Field(default=500, ge=1, le=50_000)
    scrape_interval_s: float = Field(
        default=6 * 3_600.0, ge=60, le=7 * 86_400,
        description="Scrape cadence for a tier SCRAPE_TIER_INTERVALS_S omits.",
    )
    scrape_tier_intervals_s: dict[str, float] = Field(
        default_factory=lambda: {"starter": 6 * 3_600.0, "creator": 3 * 3_600.0, "pro": 3_600.0, "studio": 1_800.0},
        description='SCRAPE_TIER_INTERVALS_S: JSON {tier: seconds}, e.g. {"pro": 3600}.',
    )
    scrape_auth_expired_interval_s: float = Field(
        default=86_400.0, ge=60, le=30 * 86_400,
        description="How often a connection whose auth expired is health-checked (not scraped until reconnected).",
    )
    sync_page_size: int = Field(default=200, ge=1, le=1_000, description="Items asked per page by the fan sync.")
    sync_subscription_history: bool = Field(
        default=False,
        description="The fan sync reads the platforms' subscription-history listing and takes the lifecycle events "
        "from it (docs/sync.md); off: it derives them from the current subscriptions.",
    )

    @field_validator("scrape_tier_intervals_s")
    @classmethod
    def _check_tier_intervals(cls, value: dict[str, float]) -> dict[str, float]:
        for tier, seconds in value.items():
            if not 60 <= seconds <= 7 * 86_400:
                raise ValueError(f"{tier}: {seconds} s is outside 60 s .. 7 days")
        return value

    @property
    def scrape_scheduler(self) -> ScrapeSchedulerSettings:
        return ScrapeSchedulerSettings(
            interval_s=self.scrape_scheduler_interval_s, batch=self.scrape_dispatch_batch,
            default_cadence_s=self.scrape_interval_s, tier_cadence_s=dict(self.scrape_tier_intervals_s),
            auth_expired_cadence_s=self.scrape_auth_expired_interval_s,
        )  # fmt: skip

    @property
    def post_scheduler(self) -> PostSchedulerSettings:
        return PostSchedulerSettings(
            interval_s=self.post_scheduler_interval_s, batch=self.post_dispatch_batch,
            max_lateness_s=self.post_max_lateness_s, requeue_after_s=self.post_requeue_after_s,
        )  # fmt: skip

    @property
    def outbox_relay(self) -> OutboxRelaySettings:
        return OutboxRelaySettings(interval_s=self.outbox_relay_interval_s, grace_s=self.outbox_relay_grace_s)

    @property
    def dispatcher(self) -> DispatcherSettings:
        return DispatcherSettings(interval_s=self.dispatcher_interval_s)

    @property
    def job_monitor(self) -> JobMonitorSettings:
        return JobMonitorSettings(
            interval_s=self.job_monitor_interval_s, dead_window_s=self.alert_dead_window_s,
            queue_age_s=self.alert_queue_age_s,
            failure_spike=FailureSpikeSettings(
                self.alert_failure_spike_window_s, self.alert_failure_spike_min, self.alert_failure_spike_ratio
            ),
            expected_roles=tuple(self.alert_expected_roles),
            webhook_url=self.alert_webhook_url.get_secret_value() if self.alert_webhook_url else None,
            webhook_secret=self.alert_webhook_secret.get_secret_value() if self.alert_webhook_secret else None,
            webhook_retry_max_s=self.alert_retry_max_s,
        )  # fmt: skip

    @property
    def job_retention(self) -> JobRetentionSettings:
        return JobRetentionSettings(interval_s=self.job_retention_interval_s, older_than_s=self.job_retention_s)

    # Platform credentials (AES-256-GCM). Never logged; see docs/credentials.md.
    credentials_enc_key_b64: SecretStr | None = Field(default=None, description="32 random bytes, base64.")
    credentials_enc_key_id: str = Field(default="k1", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    credentials_old_keys: SecretStr | None = Field(
        default=None, description="Retired keys still accepted for decryption: 'id:base64,id:base64'."
    )

    # Platforms. Tokens go only to these addresses: a connection names its platform, never a URL.
    platform_api_urls: dict[str, str] = Field(
        default_factory=dict,
        description='PLATFORM_API_URLS: JSON {platform: API base URL}, e.g. {"sandbox": "http://127.0.0.1:8900"}.',
    )
    platform_timeout_s: float = Field(default=15.0, gt=0, le=600)

    @field_validator("platform_api_urls")
    @classmethod
    def _check_platform_api_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for platform, url in value.items():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{platform}: expected an http:// or https:// URL with a host, got {url!r}")
        return {platform: url.rstrip("/") for platform, url in value.items()}

    @field_validator("web_tokens")
    @classmethod
    def _check_web_tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_web_tokens(value.get_secret_value())  # raises, naming the entry and the reason
        return value

    def api_tokens(self) -> list[WebToken]:
        return _parse_web_tokens(self.web_tokens.get_secret_value()) if self.web_tokens else []

    def platform_api_url(self, platform: str) -> str:
        """The registered API address of a platform; LookupError (saying what to set) if it has none."""
        url = self.platform_api_urls.get(platform)
        if url is None:
            raise LookupError(
                f"platform {platform!r} has no registered API address (PLATFORM_API_URLS knows "
                f"{sorted(self.platform_api_urls) or 'none'})"
            )
        return url

    # Workers.
    queues: dict[str, QueueSettings] = Field(
        default_factory=lambda: {name: QueueSettings.model_validate(q) for name, q in DEFAULT_QUEUES.items()},
        description='QUEUES: JSON merged over the defaults, e.g. {"bulk": {"concurrency": 20}}.',
    )
    job_packages: list[str] = Field(default=["jobs"], description="Packages whose modules declare the jobs.")
    # The web process (`geniehelper web`: the HTTP API).
    web_host: str = Field(default="127.0.0.1", description="Where `geniehelper web` listens.")
    web_port: int = Field(default=8080, ge=0, le=65_535)
    web_tokens: SecretStr | None = Field(
        default=None,
        description='API tokens, JSON: {"name": {"token": "<24+ random chars>", "role": "service|read|admin"}}.',
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=0, le=65_535,
        description="Serve Prometheus /metrics on 127.0.0.1 at this port (0: a free one, logged); unset: off.",
    )

    @field_validator("queues", mode="before")
    @classmethod
    def _merge_queues(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", str(name)):
                raise ValueError(f"queue name {name!r}: lower-case letters, digits and _")
        return {**DEFAULT_QUEUES, **value}

    @property
    def fair_queues(self) -> frozenset[str]:
        return frozenset(name for name, queue in self.queues.items() if queue.fair)

    def queue(self, name: str) -> QueueSettings:
        try:
            return self.queues[name]
        except KeyError:
            raise LookupError(f"unknown queue {name!r}; configured queues: {', '.join(sorted(self.queues))}") from None
    worker_shutdown_grace_s: float = Field(
        default=20.0, ge=0, le=3_600, description="On SIGTERM, time to finish running jobs before handing them back."
    )
    worker_poll_delay_s: float = Field(
        default=0.05, gt=0, le=60,
        description="How often an idle worker asks Redis for jobs; a full worker waits up to this long for a slot.",
    )
    queue_pause_poll_s: float = Field(
        default=1.0, gt=0, le=60,
        description="How often a worker asks whether its queue is paused (`geniehelper queues pause`).",
    )
    job_heartbeat_interval_s: float = Field(
        default=5.0, gt=0, le=3_600, description="How often a running job extends its lease."
    )
    job_record_batch_wait_s: float = Field(
        default=0.001, ge=0, le=1.0,
        description="How long a worker's job start or outcome waits for its other deliveries to share one "
        "statement (at most; less when all of them are waiting).",
    )
    job_lease_s: float = Field(
        default=20.0, gt=0, le=86_400,
        description="A running job whose lease is not extended for this long is re-driven elsewhere.",
    )
    job_dispatch_ttl_s: float = Field(
        default=86_400.0, ge=60, description="How long a dispatch may wait in Redis past its start time."
    )

    # The media worker (docs in README, Media worker).
    media_root: Path | None = Field(
        default=None,
        description="Where asset bytes are stored: storage keys are paths under it (default DATA_DIR/media).",
    )
    media_tmp_dir: Path | None = Field(
        default=None,
        description="Work directories of media jobs, removed after each attempt (default DATA_DIR/media-tmp).",
    )
    media_ffmpeg: str | None = Field(
        default=None, description="The ffmpeg to run (unset: `ffmpeg` on PATH, else the imageio-ffmpeg wheel's)."
    )
    media_ffmpeg_threads: int = Field(
        default=0, ge=0, le=256,
        description="Threads each ffmpeg run may use for its filters and encoder (0: ffmpeg's own choice, every core).",
    )
    media_tool_timeout_s: float = Field(
        default=600.0, gt=0, le=86_400, description="An ffmpeg run taking longer is killed and the attempt fails."
    )
    media_max_image_pixels: int = Field(
        default=100_000_000, ge=1, description="Images with more pixels are refused (decompression bombs)."
    )
    media_memory_budget_mb: float = Field(
        default=2048.0, gt=0, le=1_048_576,
        description="A media worker starts jobs while their estimated memory stays within this (README, "
        "Admission by a memory budget); the media queue's concurrency is the upper bound.",
    )
    media_admission_wait_s: float = Field(
        default=60.0, ge=0, le=3_600,
        description="A media job waiting this long for memory is handed back to the queue (untouched) and comes again.",
    )

    # AI for media jobs (docs in README, AI descriptions and transcription).
    ollama_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="Base URL of an Ollama-compatible server for media_describe (`./dev up`: the local one).",
    )
    ollama_model: str = Field(
        default="llava", min_length=1, max_length=200, description="The vision model media_describe asks for."
    )
    stt_url: str | None = Field(
        default=None, pattern=r"^https?://",
        description="Full URL of an OpenAI-style speech-to-text endpoint (multipart `file`, answers "
        "{\"text\": ...}) for media_transcribe, e.g. http://host:8000/v1/audio/transcriptions.",
    )
    stt_model: str = Field(default="whisper-1", min_length=1, max_length=200, description="Model sent to STT_URL.")
    stt_api_key: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer` to STT_URL (e.g. OpenAI's); never logged."
    )
    ai_timeout_s: float = Field(
        default=120.0, gt=0, le=3_600,
        description="An AI server that sends nothing for this long (before or within an answer) fails the attempt.",
    )

    # Health: how often each process refreshes its health key, and when a key counts as stale.
    health_interval_s: float = Field(default=5.0, gt=0, le=3_600)

    def credential_cipher(self) -> CredentialCipher:
        """The cipher for platform tokens; raises CredentialKeyError naming the variable if unusable."""
        return CredentialCipher.from_settings_values(
            self.credentials_enc_key_b64.get_secret_value() if self.credentials_enc_key_b64 else None,
            self.credentials_enc_key_id,
            self.credentials_old_keys.get_secret_value() if self.credentials_old_keys else None,
        )

    @property
    def media_root_dir(self) -> Path:
        return self.media_root or self.data_dir / "media"

    @property
    def media_work_dir(self) -> Path:
        return self.media_tmp_dir or self.data_dir / "media-tmp"

    @property
    def health_stale_after_s(self) -> float:
        return self.health_interval_s * 3


def mask_url(url: str) -> str:
    """The URL without its password (userinfo and ?password=), safe to print or log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    masked = url
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        masked = masked.replace(parts.netloc, f"{userinfo.split(':', 1)[0]}:***@{hosts}", 1)
    head, question, query = masked.partition("?")
    return head + question + re.sub(r"(?i)((?:^|&)password=)[^&#]*", r"\1***", query)


def _parse_web_tokens(text: str) -> list[WebToken]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError('expected a JSON object {"name": {"token": ..., "role": ...}}')
    tokens = []
    for name, entry in raw.items():
        try:
            tokens.append(WebToken.model_validate({**(entry if isinstance(entry, dict) else {}), "name": name}))
        except ValidationError as exc:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"token {name!r}: {reasons}") from None
    if len({t.token for t in tokens}) != len(tokens):
        raise ValueError("two entries share a token")
    return tokens


_URL_FIELDS = {"database_url", "migrate_database_url", "worker_database_url", "redis_url"}
_SECRET_FIELDS = {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}


def _shown(field: str, value: object) -> str:
    if field in _SECRET_FIELDS:
        return "'***'"
    if field in _URL_FIELDS and isinstance(value, str):
        return repr(mask_url(value))
    return repr(value)


def load_settings() -> Settings:
    """Read the settings; on an invalid value print one line naming the variable and exit(2)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            problems.append(f"{field.upper()}={_shown(field, err.get('input'))}: {err['msg']}")
        print(f"geniehelper: invalid setting {'; '.join(problems)}", file=sys.stderr)
        raise SystemExit(2) from None
