"""Classifying job errors (transient or permanent) and the backoff between attempts."""

from __future__ import annotations

import random

import asyncpg
import httpx

from geniehelper.runtime.definition import AnyJob, ErrorClass, InvalidPayload, Policy


class TransientJobError(Exception):
    """Raise from a job for a failure worth retrying; `retry_after_s` overrides the backoff."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentJobError(Exception):
    """Raise from a job for a failure that retrying will not fix."""



_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # asyncpg's state error when PostgreSQL shuts down mid-operation ("another operation is in progress").
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    ConnectionError,
    OSError,
    TimeoutError,
    httpx.TransportError,
)


def classify(exc: BaseException, job: AnyJob | None = None) -> tuple[ErrorClass, float | None]:
    """(class, retry-after seconds or None for the job's backoff). The job's own classifier first."""
    decided = job.classify(exc) if job is not None and job.classify is not None else None
    if decided is not None:
        return decided, getattr(exc, "retry_after_s", None)
    if isinstance(exc, TransientJobError):
        return "transient", exc.retry_after_s
    if isinstance(exc, PermanentJobError | InvalidPayload):
        return "permanent", None
    retryable = getattr(exc, "retryable", None)  # platform errors say it themselves
    if isinstance(retryable, bool):
        return ("transient" if retryable else "permanent"), getattr(exc, "retry_after_s", None)
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return ("transient" if status == 429 or status >= 500 else "permanent"), None
    if isinstance(exc, _TRANSIENT_TYPES):
        return "transient", None
    return "permanent", None


def backoff_s(policy: Policy, attempt: int, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** max(0, attempt - 1))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


