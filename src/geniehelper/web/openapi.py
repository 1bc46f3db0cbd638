"""The OpenAPI description of the HTTP API, served at /api/openapi.json (tests check it against the
real endpoints: every route described, every status they answer documented)."""

from __future__ import annotations

from typing import Any

_ERRORS = {"$ref": "#/components/schemas/FieldErrors"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_AUTH_RESPONSES = {
    "401": _response("No token, or not one of WEB_TOKENS", _ERROR),
    "403": _response("The token's role may not do this", _ERROR),
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "GenieHelper jobs API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "FieldErrors": {"type": "object", "required": ["errors"], "properties": {"errors": {
                "type": "array", "items": {"type": "object", "required": ["field", "reason"], "properties": {
                    "field": {"type": "string"}, "reason": {"type": "string"}}}}}},
            "QuotaRefusal": {"type": "object", "required": ["error", "reason", "message"], "properties": {
                "error": {"const": "tier_limit_reached"}, "reason": {"enum": ["limit_reached", "not_in_tier"]},
                "message": {"type": "string"}, "operation": {"type": "string"}, "tier": {"type": "string"},
                "limit": {"type": "integer"}, "resets_at": {"type": ["string", "null"], "format": "date-time"}}},
            "Enqueued": {"type": "object", "required": ["id", "job", "queue", "status", "key", "duplicate"],
                         "properties": {"id": {"type": "string", "format": "uuid"}, "job": {"type": "string"},
                                        "queue": {"type": "string"}, "status": {"type": "string"},
                                        "key": {"type": "string"}, "duplicate": {"type": "boolean"}}},
            "Job": {"type": "object", "description": "The whole job record (media_jobs), with its attempt "
                    "history and `key_runs`, the other records of its key."},
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/jobs": {"post": {
            "summary": "Enqueue a job (service and admin tokens)",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "description": "The job key: enqueueing the same key again while its job is "
                                           "queued or running returns that job (200, duplicate true).",
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["job"], "additionalProperties": False, "properties": {
                    "job": {"type": "string"}, "payload": {"type": "object"},
                    "user_id": {"type": ["string", "null"], "format": "uuid",
                                "description": "The creator; null for a system job."}}}}}},
            "responses": {
                "201": _response("Recorded and pushed", {"$ref": "#/components/schemas/Enqueued"}),
                "200": _response("The key's active job (nothing new made)", {"$ref": "#/components/schemas/Enqueued"}),
                "403": _response("Over the creator's quota, or the token may not enqueue",
                                 {"oneOf": [{"$ref": "#/components/schemas/QuotaRefusal"}, _ERROR]}),
                "422": _response("Each field and the reason", _ERRORS),
                "401": _AUTH_RESPONSES["401"],
            },
        }},
        "/api/jobs/{job_id}": {"get": {
            "summary": "A job's record (read and admin tokens)", "parameters": [_JOB_ID],
            "responses": {"200": _response("The record", {"$ref": "#/components/schemas/Job"}),
                          "404": _response("No such job", _ERROR), "422": _response("Not a uuid", _ERRORS),
                          **_AUTH_RESPONSES},
        }},
        "/api/jobs/{job_id}/retry": {"post": {
            "summary": "Run a failed or cancelled job again as a new record (admin tokens)", "parameters": [_JOB_ID],
            "responses": {"201": _response("The new record", {"type": "object", "properties": {
                              "id": {"type": "string"}, "new_id": {"type": "string"},
                              "duplicate": {"type": "boolean"}}}),
                          "404": _response("No such job", _ERROR),
                          "409": _response("The job is not finished", _ERROR),
                          "422": _response("Not a uuid, or the retry was refused", _ERRORS), **_AUTH_RESPONSES},
        }},
        "/api/queues": {"get": {
            "summary": "Per queue: Redis depth, counts by status, oldest due job (read and admin tokens)",
            "responses": {"200": _response("The queues", {"type": "object", "properties": {
                "queues": {"type": "array", "items": {"type": "object"}}}}), **_AUTH_RESPONSES},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics: queues, stalled jobs, open alerts, scheduler ticks, live processes "
                       "(read and admin tokens)",
            "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}},
                          **_AUTH_RESPONSES},
        }},
        "/api/openapi.json": {"get": {
            "summary": "This description", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }},
    },
}  # fmt: skip
