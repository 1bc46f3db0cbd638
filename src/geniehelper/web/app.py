"""The `web` process's application: the HTTP API (web/api.py) and the dashboard (web/dashboard.py)."""

from __future__ import annotations

from starlette.applications import Starlette

from geniehelper.web import api, dashboard
from geniehelper.web.api import ApiState


def create_app(state: ApiState) -> Starlette:
    return Starlette(routes=[*api.routes(state), *dashboard.routes(state)])
