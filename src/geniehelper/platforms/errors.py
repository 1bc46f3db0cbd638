"""Typed errors of platform clients: each says whether trying again can help.

Callers branch on the type (or on `.retryable`): transient errors and rate limits are retried with
backoff; auth errors ask the creator to reconnect; permanent errors fail the job; `OutcomeUnknown` is
neither: the write may have happened, so the caller verifies before deciding.
Messages carry the method and path, never the token or a request header.
"""

from __future__ import annotations


class PlatformError(Exception):
    """Base of every platform client error."""

    retryable: bool = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthExpired(PlatformError):
    """The platform refused the token (401/403): the creator must reconnect; retrying will not help."""

    retryable = False


class RateLimited(PlatformError):
    """429: retry after `retry_after_s` seconds (from `Retry-After`, 30 s when the platform gave none)."""

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float, status_code: int | None = 429) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after_s = retry_after_s


class TransientPlatformError(PlatformError):
    """5xx, or a network failure that left nothing done (not connected, or a read-only call)."""

    retryable = True


class PermanentPlatformError(PlatformError):
    """A 4xx other than auth and rate limit, or a malformed response: the same request fails again."""

    retryable = False


class OutcomeUnknown(PlatformError):
    """A write may have reached the platform, but no answer came back (read timeout, dropped connection).

    Not blindly retryable: look the write up by its idempotency key first
    (`find_post_by_idempotency_key` for posts), and only retry, with the same key, if it is absent.
    """

    retryable = False

    def __init__(self, message: str, *, idempotency_key: str, status_code: int | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.idempotency_key = idempotency_key
