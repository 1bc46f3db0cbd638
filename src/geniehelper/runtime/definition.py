"""A job definition: everything about one job, declared once in its module in `jobs/`.

`JobDefinition[P]` names the job (its stable wire name), its payload model `P`, its queue, its
policy (attempts, timeout, backoff, an optional retry classifier), its quota operation, its scope
(a creator's job or a system job), how its key, subject and concurrency key derive from the
payload, and what runs: `run(ctx, payload)`, `on_failure(ctx, payload, error)` once the runtime
gives it up, and `on_success(ctx, payload, result)` for the next step of a chain. Services enqueue
by name through a registry (`geniehelper.runtime.registry`) and never import job code themselves.

Payload models are frozen, strict and `extra="forbid"`: a field added later needs a default,
anything else is a new job name. JSON is the only wire format (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, ValidationError

from geniehelper.runtime.resources import ResourceKey

if TYPE_CHECKING:
    from geniehelper.runtime.admission import EstimateContext, MemoryEstimate
    from geniehelper.runtime.context import JobContext

# A payload carries ids and small values, never blobs or secrets.
MAX_PAYLOAD_BYTES = 64 * 1024

Scope = Literal["creator", "system"]
ErrorClass = Literal["transient", "permanent"]
JobResult = BaseModel | dict[str, Any] | None


def queue_key(queue: str) -> str:
    """The Redis sorted set of a queue (queues themselves are configuration: see Settings.queues)."""
    return f"geniehelper:queue:{queue}"


class JobPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, str_max_length=10_000)


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class UnknownJob(LookupError):
    def __init__(self, job_name: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown job {job_name!r}; known jobs: {', '.join(sorted(known))}")
        self.job_name = job_name


class InvalidPayload(ValueError):
    """A payload refused before it runs, with each field and the reason."""

    def __init__(self, job_name: str, errors: list[FieldError]) -> None:
        self.job_name = job_name
        self.errors = errors
        super().__init__(f"invalid payload for {job_name}: " + "; ".join(str(e) for e in errors))

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.job_name, "errors": [{"field": e.field, "reason": e.reason} for e in self.errors]}



@dataclass(frozen=True)
class Subject:
    """What a job is about, recorded on its job record (subject_type, subject_id)."""

    type: str
    id: UUID


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    timeout_s: float = 60.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0


P = TypeVar("P", bound=JobPayload)


@dataclass(frozen=True)
class Concurrency(Generic[P]):
    """At most `limit` attempts run at once per key (within the job's scope)."""

    key: Callable[[P], str]
    limit: int = 1


@dataclass(frozen=True)
class JobDefinition(Generic[P]):
    name: str
    payload: type[P]
    run: Callable[[JobContext, P], Awaitable[JobResult]]
    queue: str = "default"
    scope: Scope = "creator"
    policy: Policy = field(default_factory=Policy)
    # Decides transient/permanent for errors the job knows better; None falls back to the default.
    classify: Callable[[BaseException], ErrorClass | None] | None = None
    # Operation name in tier_rate_limits.json, consumed at enqueue; None = not quota-bound.
    quota_operation: str | None = None
    # The record's key (unique among its active records); None = every enqueue is a new job.
    key: Callable[[P], str] | None = None
    subject: Callable[[P], Subject] | None = None
    concurrency: Concurrency[P] | None = None
    on_failure: Callable[[JobContext, P, str], Awaitable[None]] | None = None
    on_success: Callable[[JobContext, P, JobResult], Awaitable[None]] | None = None
    # What it uses beyond the database (runtime.resources): opened by the workers of its queue.
    resources: tuple[ResourceKey[Any], ...] = ()
    # The memory it will take, asked before it starts: its worker admits it within a memory budget
    # (runtime.admission; MEDIA_MEMORY_BUDGET_MB). None: admitted by the queue's concurrency alone.
    memory_estimate: Callable[[EstimateContext, P], Awaitable[MemoryEstimate]] | None = None

    RESERVED_KWARGS: ClassVar[frozenset[str]] = frozenset({"record_id", "user_id", "payload"})

    def __post_init__(self) -> None:
        if self.scope == "system" and self.quota_operation is not None:
            raise ValueError(f"job {self.name!r}: a system job has no creator whose quota it could use")

    def parse_payload(self, raw: str | bytes | dict[str, Any] | JobPayload) -> P:
        """Validate a payload exactly as it will travel: through JSON, size-capped first."""
        if isinstance(raw, self.payload):
            return raw
        if isinstance(raw, JobPayload):
            raise InvalidPayload(self.name, [FieldError("payload", f"expected {self.payload.__name__}")])
        text = json.dumps(raw) if isinstance(raw, dict) else raw
        size = len(text.encode() if isinstance(text, str) else text)
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidPayload(
                self.name, [FieldError("payload", f"{size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
            )
        try:
            return self.payload.model_validate_json(text)
        except ValidationError as exc:
            raise InvalidPayload(self.name, field_errors(exc)) from None


AnyJob = JobDefinition[Any]


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(".".join(str(p) for p in err["loc"]) or "payload", err["msg"])
        for err in exc.errors(include_url=False)
    ]
