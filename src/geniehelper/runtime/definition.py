"""Job contracts: the wire name, payload model and run policy of every job.

A contract is what services enqueue against and what a worker runs; the implementation lives in
`jobs/` and is bound to its contract by the worker settings (`workers/`). Payload models are frozen,
strict and `extra="forbid"`: a field added later needs a default, anything else is a new job name.
JSON is the only wire format (never pickle: a foreign client must not run code in a worker).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

# A payload carries ids and small values, never blobs or secrets.
MAX_PAYLOAD_BYTES = 64 * 1024

Queue = Literal["default", "media"]
QUEUE_NAMES: dict[str, str] = {"default": "geniehelper:queue:default", "media": "geniehelper:queue:media"}


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
class JobSpec:
    name: str
    payload_model: type[JobPayload]
    queue: Queue = "default"
    max_attempts: int = 5
    timeout_s: float = 60.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    # Operation name in tier_rate_limits.json, consumed at enqueue; None = not quota-bound.
    quota_operation: str | None = None

    RESERVED_KWARGS: ClassVar[frozenset[str]] = frozenset({"record_id", "user_id", "payload"})

    def parse_payload(self, raw: str | bytes | dict[str, Any] | JobPayload) -> JobPayload:
        """Validate a payload exactly as it will travel: through JSON, size-capped first."""
        if isinstance(raw, self.payload_model):
            return raw
        if isinstance(raw, JobPayload):
            raise InvalidPayload(self.name, [FieldError("payload", f"expected {self.payload_model.__name__}")])
        text = json.dumps(raw) if isinstance(raw, dict) else raw
        size = len(text.encode() if isinstance(text, str) else text)
        if size > MAX_PAYLOAD_BYTES:
            raise InvalidPayload(
                self.name, [FieldError("payload", f"{size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
            )
        try:
            return self.payload_model.model_validate_json(text)
        except ValidationError as exc:
            raise InvalidPayload(self.name, field_errors(exc)) from None


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(".".join(str(p) for p in err["loc"]) or "payload", err["msg"])
        for err in exc.errors(include_url=False)
    ]


class JobRegistry:
    """The contracts a process knows, by name. Built at start-up and passed in; never global."""

    def __init__(self, specs: Iterable[JobSpec]) -> None:
        self._specs: dict[str, JobSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"job {spec.name!r} registered twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> JobSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownJob(name, self._specs) from None

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return sorted(self._specs)
