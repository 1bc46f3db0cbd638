"""The HTTP API for services and scripts (`geniehelper web`): enqueue, read a job, queue stats, retry.

Every request but the OpenAPI description carries `Authorization: Bearer <token>`; a token has a
role (WEB_TOKENS): `service` may enqueue only, `read` may read, `admin` may do everything. Errors
are JSON: 401 (no or unknown token), 403 (the role may not, or a quota refusal with the original
system's body), 404, 409 (retry of a job not finished), 422 (`{"errors": [{"field", "reason"}]}`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from arq.connections import ArqRedis
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from geniehelper.db import Database
from geniehelper.ops import jobs as ops_jobs
from geniehelper.ops import queues as ops_queues
from geniehelper.runtime.definition import InvalidPayload, UnknownJob
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.quotas import QuotaExceeded
from geniehelper.settings import Settings, WebToken
from geniehelper.web.auth import WHAT, bearer, may
from geniehelper.web.metrics import render as render_metrics
from geniehelper.web.openapi import OPENAPI


@dataclass
class ApiState:
    settings: Settings
    db: Database
    redis: ArqRedis
    queue: JobQueue
    tokens: list[WebToken]


def _json(value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(value, default=_plain)), status_code=status)


def _plain(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _unprocessable(errors: list[dict[str, str]]) -> JSONResponse:
    return _json({"errors": errors}, 422)


Handler = Callable[[Request, ApiState, WebToken], Awaitable[Response]]


def _guarded(state: ApiState, action: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        token = bearer(state.tokens, request.headers.get("authorization", ""))
        if token is None:
            return JSONResponse({"error": "unauthorized", "message": "a valid `Authorization: Bearer <token>` is "
                                 "required (WEB_TOKENS)"}, 401, headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not may(token, action):
            return _json({"error": "forbidden", "message": f"a {token.role} token may not {WHAT[action]}"}, 403)
        return await handler(request, state, token)

    return endpoint


async def enqueue(request: Request, state: ApiState, token: WebToken) -> Response:
    try:
        body = await request.json()
    except ValueError as exc:
        return _unprocessable([{"field": "body", "reason": f"not JSON: {exc}"}])
    if not isinstance(body, dict):
        return _unprocessable([{"field": "body", "reason": "expected a JSON object"}])
    errors = []
    job_name, payload, user_id = body.get("job"), body.get("payload", {}), body.get("user_id")
    if not isinstance(job_name, str) or not job_name:
        errors.append({"field": "job", "reason": "required: the job's name"})
    if not isinstance(payload, dict):
        errors.append({"field": "payload", "reason": "expected a JSON object"})
    creator: UUID | None = None
    if user_id is not None:
        try:
            creator = UUID(str(user_id))
        except ValueError:
            errors.append({"field": "user_id", "reason": f"{user_id!r} is not a uuid"})
    unknown = set(body) - {"job", "payload", "user_id"}
    errors += [{"field": name, "reason": "unknown field"} for name in sorted(unknown)]
    if errors:
        return _unprocessable(errors)
    key = request.headers.get("idempotency-key") or None
    try:
        job = await state.queue.enqueue(str(job_name), payload, user_id=creator, key=key)
    except UnknownJob as exc:
        return _unprocessable([{"field": "job", "reason": str(exc)}])
    except InvalidPayload as exc:
        return _unprocessable([{"field": f"payload.{e['field']}", "reason": e["reason"]}
                               for e in exc.as_dict()["errors"]])  # fmt: skip
    except ValueError as exc:  # a creator job without a creator, a system job with one
        return _unprocessable([{"field": "user_id", "reason": str(exc)}])
    except asyncpg.ForeignKeyViolationError:
        return _unprocessable([{"field": "user_id", "reason": f"no creator {creator}"}])
    except QuotaExceeded as exc:
        return _json(exc.as_dict(), 403)
    return _json({"id": job.id, "job": job.job_name, "queue": job.queue, "status": job.status, "key": job.job_key,
                  "duplicate": job.duplicate}, 200 if job.duplicate else 201)  # fmt: skip


async def _job(request: Request, state: ApiState) -> dict[str, Any] | Response:
    """The record the path names, or the answer saying why there is none (422, 404)."""
    try:
        job_id = UUID(request.path_params["job_id"])
    except ValueError:
        return _unprocessable([{"field": "job_id", "reason": "not a uuid"}])
    async with state.db.system_tx() as conn:
        job = await ops_jobs.get_job(conn, job_id)
    return job if job is not None else _json({"error": "not_found", "message": f"no job {job_id}"}, 404)


async def show(request: Request, state: ApiState, token: WebToken) -> Response:
    job = await _job(request, state)
    return job if isinstance(job, Response) else _json(job)


async def queues(request: Request, state: ApiState, token: WebToken) -> Response:
    async with state.db.system_tx() as conn:
        stats = await ops_queues.queue_stats(conn, state.settings)
    await ops_queues.add_redis_depths(state.redis, stats)
    return _json({"queues": stats})


async def retry(request: Request, state: ApiState, token: WebToken) -> Response:
    job = await _job(request, state)
    if isinstance(job, Response):
        return job
    job_id = job["id"]
    if job["status"] not in ops_jobs.RETRYABLE:
        return _json({"error": "not_finished", "message": f"job {job_id} is {job['status']}: only failed or "
                      "cancelled jobs are retried"}, 409)  # fmt: skip
    report = await ops_jobs.retry_jobs(state.queue, [job], f"api:{token.name}", {"id": str(job_id)})
    if report.failed:
        return _unprocessable([{"field": "job_id", "reason": report.failed[0]["error"]}])
    (done,) = report.retried
    return _json({"id": job_id, "new_id": done["new_id"], "duplicate": done["duplicate"]}, 201)


async def metrics(request: Request, state: ApiState, token: WebToken) -> Response:
    return Response(await render_metrics(state), media_type=CONTENT_TYPE_LATEST)


async def openapi(_request: Request) -> Response:
    return JSONResponse(OPENAPI)


def routes(state: ApiState) -> list[BaseRoute]:
    return [
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/api/jobs", _guarded(state, "enqueue", enqueue), methods=["POST"]),
        Route("/api/jobs/{job_id}", _guarded(state, "read", show), methods=["GET"]),
        Route("/api/jobs/{job_id}/retry", _guarded(state, "act", retry), methods=["POST"]),
        Route("/api/queues", _guarded(state, "read", queues), methods=["GET"]),
        Route("/metrics", _guarded(state, "read", metrics), methods=["GET"]),
    ]
