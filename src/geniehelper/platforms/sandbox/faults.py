"""Faults the sandbox injects into its next matching /v1 requests (POST /admin/faults)."""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

if TYPE_CHECKING:
    from geniehelper.platforms.sandbox.accounts import Account

FaultKind = Literal["rate_limit", "server_error", "slow", "accept_then_timeout"]


class FaultSpec(BaseModel):
    """Body of POST /admin/faults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    count: int = Field(default=1, ge=1, le=1_000_000)
    path_prefix: str = Field(default="/v1/", pattern=r"^/")
    method: str | None = None
    account_id: str | None = None
    retry_after_s: float = Field(default=2.0, ge=0, le=86_400)
    retry_after_format: Literal["seconds", "http_date", "none"] = "seconds"
    delay_s: float = Field(default=3.0, ge=0, le=600)
    status: int = Field(default=503, ge=500, le=599)


@dataclass
class PendingFault:
    fault_id: str
    spec: FaultSpec
    remaining: int

    def matches(self, request: Request, account: Account) -> bool:
        return (
            self.remaining > 0
            and request.url.path.startswith(self.spec.path_prefix)
            and (self.spec.method is None or self.spec.method.upper() == request.method)
            and (self.spec.account_id is None or self.spec.account_id == account.account_id)
        )


def retry_after_header(spec: FaultSpec) -> dict[str, str]:
    if spec.retry_after_format == "none":
        return {}
    if spec.retry_after_format == "http_date":
        # Wall-clock time, not the sandbox clock: the client compares it with its own clock.
        when = datetime.now(UTC) + timedelta(seconds=spec.retry_after_s)
        return {"Retry-After": email.utils.format_datetime(when, usegmt=True)}
    return {"Retry-After": str(math.ceil(spec.retry_after_s))}
