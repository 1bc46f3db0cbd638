"""Who is asking: API bearer tokens and the dashboard's signed session cookie, one set of tokens.

Tokens come from WEB_TOKENS, each with a role: `service` may enqueue only, `read` may read, `admin`
may do everything. The API takes `Authorization: Bearer <token>`. The dashboard takes the token once
on its sign-in page and then keeps a cookie naming the token and an expiry, signed with the token
itself (HMAC-SHA256): the cookie never holds the token, and taking a token out of WEB_TOKENS ends
its sessions. Dashboard forms carry a CSRF value derived from the session (the cookie is also
SameSite=Strict and HttpOnly).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from geniehelper.settings import WebToken

SESSION_COOKIE = "gh_session"
SESSION_S = 12 * 3600

ROLES_MAY: dict[str, frozenset[str]] = {
    "enqueue": frozenset({"service", "admin"}),
    "read": frozenset({"read", "admin"}),
    "act": frozenset({"admin"}),  # retry, cancel, pause, resume, acknowledge, resolve
}


WHAT = {"enqueue": "enqueue jobs", "read": "read", "act": "act on jobs, queues or alerts (an admin token may)"}


def may(token: WebToken, action: str) -> bool:
    return token.role in ROLES_MAY[action]


def token_for(tokens: list[WebToken], presented: str) -> WebToken | None:
    """The token presented, compared in constant time."""
    if not presented:
        return None
    return next((t for t in tokens if hmac.compare_digest(t.token.encode(), presented.encode())), None)


def bearer(tokens: list[WebToken], authorization: str) -> WebToken | None:
    scheme, _, presented = authorization.partition(" ")
    return token_for(tokens, presented.strip()) if scheme.lower() == "bearer" else None


def _sign(token: WebToken, message: str) -> str:
    return hmac.new(token.token.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(token: WebToken, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + SESSION_S)
    return f"{token.name}.{expires}.{_sign(token, f'session:{token.name}.{expires}')}"


def session_token(tokens: list[WebToken], value: str, now: float | None = None) -> WebToken | None:
    """The token a session cookie was signed with, if it is still configured and the cookie unexpired."""
    rest, _, signature = value.rpartition(".")  # a name may hold dots; expiry and signature never do
    name, _, expires = rest.rpartition(".")
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return None
    token = next((t for t in tokens if t.name == name), None)
    if token is None or not hmac.compare_digest(_sign(token, f"session:{name}.{expires}"), signature):
        return None
    return token


def csrf_value(token: WebToken, session: str) -> str:
    return _sign(token, f"csrf:{session}")[:32]


def csrf_ok(token: WebToken, session: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_value(token, session), presented)
