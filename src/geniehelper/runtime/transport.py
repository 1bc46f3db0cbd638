"""The Redis-compatible server: arq connections, the wire format, dispatches, and a config check.

Redis only carries "dispatch n of record r": arq job id `<record id>:<n>`, kwargs `record_id`,
`user_id`, `payload` (a JSON object as a string). The record in PostgreSQL decides what runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from geniehelper.runtime.definition import queue_key

# Worker-side names for deliveries that must not reach arq's own handling (see job_deserializer).
REJECTED_FUNCTION = "__rejected__"
UNKNOWN_FUNCTION = "__unknown_job__"


def _json_default(value: object) -> object:
    # arq stores a failed job's exception as its result: keep it readable instead of unserialisable.
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def wire_dumps(value: Any) -> bytes:
    """The one serializer for arq jobs and results (both directions)."""
    return json.dumps(value, default=_json_default, separators=(",", ":")).encode()


def wire_loads(data: bytes) -> Any:
    return json.loads(data)


def job_deserializer(known_functions: Collection[str]) -> Callable[[bytes], dict[str, Any]]:
    """arq's job deserializer for a worker: every envelope comes out well-formed.

    arq looks the function up and splats the arguments itself, so a malformed envelope (not JSON,
    the name a list, the args a number) would fail inside arq before our wrapper runs, and a name
    this worker does not know would be finalised by arq. Both are rewritten to one of our handlers:
    `__rejected__` (names the field and the reason) or `__unknown_job__` (hands the job back).
    """

    def rejected(problem: str, raw: Any) -> dict[str, Any]:
        envelope = raw if isinstance(raw, dict) else {}
        kwargs = envelope["k"] if isinstance(envelope.get("k"), dict) else {}
        name = envelope["f"] if isinstance(envelope.get("f"), str) else None
        found = {"record_id": kwargs.get("record_id"), "user_id": kwargs.get("user_id"), "job_name": name}
        return {"t": 1, "f": REJECTED_FUNCTION, "a": [], "et": 0, "k": {"problem": problem, **found}}

    def load(data: bytes) -> dict[str, Any]:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            return rejected(f"envelope: not JSON ({exc})", None)
        if not isinstance(raw, dict):
            return rejected(f"envelope: expected a JSON object, got {type(raw).__name__}", None)
        for field, kind, label in (("f", str, "a string"), ("a", list, "a list"), ("k", dict, "an object")):
            if not isinstance(raw.get(field), kind):
                return rejected(f"envelope.{field}: must be {label}, got {type(raw.get(field)).__name__}", raw)
        for field in ("t", "et"):
            if raw.get(field) is not None and (not isinstance(raw[field], int) or isinstance(raw[field], bool)):
                return rejected(f"envelope.{field}: must be an integer, got {type(raw[field]).__name__}", raw)
        raw.setdefault("et", 0)
        raw.setdefault("t", None)
        if raw["f"] not in known_functions:
            return {**raw, "f": UNKNOWN_FUNCTION, "a": [], "k": {"job_name": raw["f"], "kwargs": raw["k"]}}
        return dict(raw)

    return load


def arq_job_id(record_id: UUID, dispatch_no: int) -> str:
    return f"{record_id}:{dispatch_no}"


def dispatch_no_of(arq_id: str, record_id: UUID) -> int:
    """The dispatch a delivery carries: `<record id>:<n>`; an id of another shape counts as dispatch 1."""
    prefix = f"{record_id}:"
    if arq_id.startswith(prefix) and arq_id[len(prefix) :].isdigit():
        return int(arq_id[len(prefix) :])
    return 1


@dataclass(frozen=True)
class Dispatch:
    """Dispatch `dispatch_no` of a job record, as it is pushed to Redis."""

    record_id: UUID
    dispatch_no: int
    user_id: UUID | None  # None: a system job
    job_name: str
    queue: str
    payload_json: str
    run_at: datetime


# arq's enqueue (`ArqRedis.enqueue_job`: skip a job whose key or result exists, else set the job key
# with its expiry and add it to the queue) for many jobs in one round trip; arq's is three per job.
# KEYS: job key, result key, queue key per job; ARGV: job id, score (ms), expiry (ms), job per job.
# Returns 1 per job pushed, 0 per job Redis already held.
PUSH_SCRIPT = """
local pushed = {}
for i = 1, #KEYS / 3 do
    local k, a = (i - 1) * 3, (i - 1) * 4
    if redis.call('exists', KEYS[k + 1], KEYS[k + 2]) == 0 then
        redis.call('psetex', KEYS[k + 1], ARGV[a + 3], ARGV[a + 4])
        redis.call('zadd', KEYS[k + 3], ARGV[a + 2], ARGV[a + 1])
        pushed[i] = 1
    else
        pushed[i] = 0
    end
end
return pushed
"""


async def push_dispatches_at_once(redis: ArqRedis, dispatches: list[Dispatch], *, ttl_s: float) -> list[bool]:
    """Put dispatches on their queues in one round trip; False for each Redis already held (queued or running).

    The start time is never in the past (arq derives the key's expiry from it), and the key lives
    `ttl_s` beyond it: a dispatch whose key expires is found missing and re-driven.
    """
    if not dispatches:
        return []
    now = datetime.now(UTC)
    now_ms = round(now.timestamp() * 1000)
    keys: list[Any] = []
    argv: list[Any] = []  # str, int and bytes: redis-py encodes each
    for d in dispatches:
        job_id = arq_job_id(d.record_id, d.dispatch_no)
        defer_until = max(d.run_at, now)
        score = round(defer_until.timestamp() * 1000)
        kwargs = {
            "record_id": str(d.record_id), "user_id": str(d.user_id) if d.user_id else None, "payload": d.payload_json,
        }  # fmt: skip
        keys += [job_key_prefix + job_id, result_key_prefix + job_id, queue_key(d.queue)]
        argv += [job_id, score, score - now_ms + round(ttl_s * 1000), serialize_job(
            d.job_name, (), kwargs, None, now_ms, serializer=wire_dumps
        )]  # fmt: skip
    pushed: list[int] = await redis.eval(PUSH_SCRIPT, len(keys), *keys, *argv)  # type: ignore[misc]  # redis-py types sync and async in one
    return [bool(p) for p in pushed]


async def dispatches_present(redis: ArqRedis, ids: list[tuple[UUID, int]]) -> list[bool]:
    """Whether Redis holds each dispatch's job key (one pipeline)."""
    async with redis.pipeline(transaction=False) as pipe:
        for record_id, dispatch_no in ids:
            pipe.exists(job_key_prefix + arq_job_id(record_id, dispatch_no))
        found = await pipe.execute()
    return [bool(n) for n in found]


def redis_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    # Fail fast instead of arq's default of retrying the first connection for ~5 s per try.
    settings.conn_retries = 3
    settings.conn_retry_delay = 1
    return settings


async def create_arq_redis(url: str) -> ArqRedis:
    pool: ArqRedis = await create_pool(redis_settings(url), job_serializer=wire_dumps, job_deserializer=wire_loads)
    return pool


async def config_warnings(redis: Any) -> list[str]:
    """What makes this server unsafe as a job queue: it must persist and must never evict jobs."""
    warnings = []
    try:
        config = await redis.config_get("appendonly", "maxmemory-policy")
    except Exception as exc:  # managed servers may forbid CONFIG
        return [f"could not read the server configuration ({exc}); make sure it persists and never evicts"]
    appendonly = config.get("appendonly") or config.get(b"appendonly")
    policy = config.get("maxmemory-policy") or config.get(b"maxmemory-policy")
    if appendonly not in ("yes", b"yes"):
        warnings.append("appendonly is not 'yes': queued jobs are lost if the server restarts")
    if policy not in ("noeviction", b"noeviction"):
        warnings.append(f"maxmemory-policy is {policy!r}, not 'noeviction': the server may evict queued jobs")
    return warnings
