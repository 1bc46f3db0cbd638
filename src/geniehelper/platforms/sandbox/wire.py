"""The sandbox's HTTP plumbing: error answers, cursors, request bodies, idempotency keys, held responses."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from geniehelper.platforms.models import PlatformModel
from geniehelper.web.serve import is_loopback

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_IDEMPOTENCY_KEY_LEN = 255
# How often a held response checks whether the client has gone (then it stops waiting).
_DISCONNECT_POLL_S = 0.05


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def dump(model: PlatformModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this platform issued") from None
    if prefix != "o" or offset < 0:
        raise ApiError(400, "invalid_cursor", "cursor is not one this platform issued")
    return offset


async def json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "body is not JSON") from None


def validated(model: type[ModelT], data: Any) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(422, "invalid_request", detail[:500]) from None


def idempotency_key(request: Request) -> str:
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        raise ApiError(400, "missing_idempotency_key", "writes require an Idempotency-Key header")
    if len(key) > MAX_IDEMPOTENCY_KEY_LEN:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key is too long")
    return key


async def hold_unless_disconnected(request: Request, delay_s: float) -> None:
    """Wait `delay_s`, or less if the client goes away (nobody is left to answer)."""
    # Read the body first: `is_disconnected` consumes the next ASGI message, which must not be the body.
    await request.body()
    deadline = time.monotonic() + delay_s
    while (remaining := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(_DISCONNECT_POLL_S, remaining))
        if await request.is_disconnected():
            return


def admin(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an admin handler: loopback clients only (a second fence behind the loopback bind)."""

    async def endpoint(request: Request) -> Response:
        if request.client is None or not is_loopback(request.client.host):
            return error(403, "forbidden", "admin endpoints answer loopback clients only")
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.message)

    return endpoint
