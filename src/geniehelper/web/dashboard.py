"""The on-call dashboard on the `web` process: server-rendered pages (Jinja2), live regions refreshed
by static/live.js, and admin actions as plain HTML forms.

Pages: `/` (throughput and failures per minute, queues with pause/resume, scheduler leaders, live
processes, open alerts), `/jobs` (filters, bulk retry/cancel on a filter after a confirmation
page), `/jobs/{id}` (payload, attempt history, other runs of its key, retry/cancel). Each page's
live part is served again under `/live/...` for the refresh. Signing in takes a WEB_TOKENS token
(web/auth.py); a `read` token sees everything and is offered no action, and its POSTs answer 403.
Every action goes through the same ops functions as the CLI, recorded in ops_actions as
`web:<token name>`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode
from uuid import UUID

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from geniehelper import health
from geniehelper.ops import alerts as ops_alerts
from geniehelper.ops import format as fmt
from geniehelper.ops import jobs as ops_jobs
from geniehelper.ops import overview
from geniehelper.ops import queues as ops_queues
from geniehelper.settings import WebToken
from geniehelper.web import auth
from geniehelper.web.api import ApiState
from geniehelper.web.charts import throughput_chart
from geniehelper.web.filters import FILTER_FIELDS, JOB_STATUSES, FilterError, job_filter

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TEMPLATES.env.filters.update(age=fmt.age, when=fmt.when, cut=fmt.cut)
LIST_LIMIT = 100
BULK_LIMIT = 1000
PREVIEW = 10

Page = Callable[[Request, "ApiState", "Viewer"], Awaitable[Response]]


class Viewer:
    """The signed-in token, with what the templates need: its name, whether it may act, the CSRF value."""

    def __init__(self, token: WebToken, session: str) -> None:
        self.token = token
        self.name = token.name
        self.role = token.role
        self.may_act = auth.may(token, "act")
        self.csrf = auth.csrf_value(token, session)

    @property
    def actor(self) -> str:
        return f"web:{self.name}"


def _viewer(request: Request, tokens: list[WebToken]) -> Viewer | None:
    session = request.cookies.get(auth.SESSION_COOKIE, "")
    token = auth.session_token(tokens, session) if session else None
    return Viewer(token, session) if token is not None and auth.may(token, "read") else None


def _render(request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any) -> Response:
    return TEMPLATES.TemplateResponse(request, name, {"viewer": viewer, **context}, status_code=status)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (what the dashboard's forms post), last value of each field."""
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


def _page(state: ApiState, handler: Page, *, action: str = "read") -> Callable[[Request], Awaitable[Response]]:
    """Signed in (else the sign-in page; a live refresh gets 401), allowed `action`, and for a POST a
    valid CSRF value."""

    async def endpoint(request: Request) -> Response:
        viewer = _viewer(request, state.tokens)
        if viewer is None:
            if request.headers.get("x-live") or request.method != "GET":
                return Response("sign in again", 401)
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", 303)
        if action != "read" and not viewer.may_act:
            return _render(request, "denied.html", viewer, 403, what=auth.WHAT[action])
        if request.method == "POST":
            form = await _form(request)
            if not auth.csrf_ok(viewer.token, request.cookies.get(auth.SESSION_COOKIE, ""), form.get("csrf", "")):
                return _render(request, "denied.html", viewer, 403, what="post this form (it is stale: reload)")
            request.state.form = form
        return await handler(request, state, viewer)

    return endpoint


# --- sign in ----------------------------------------------------------------------------------------


async def login_page(request: Request, state: ApiState) -> Response:
    return _render(request, "login.html", None, next=_safe_next(request.query_params.get("next")),
                   no_tokens=not state.tokens)  # fmt: skip


async def login(request: Request, state: ApiState) -> Response:
    form = await _form(request)
    token = auth.token_for(state.tokens, form.get("token", "").strip())
    target = _safe_next(form.get("next"))
    if token is None or not auth.may(token, "read"):
        reason = "unknown token" if token is None else f"a {token.role} token may not read the dashboard"
        return _render(request, "login.html", None, 401, next=target, error=reason, no_tokens=not state.tokens)
    response = RedirectResponse(target, 303)
    response.set_cookie(auth.SESSION_COOKIE, auth.session_value(token), max_age=auth.SESSION_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
    return response


async def logout(request: Request, state: ApiState) -> Response:
    response = RedirectResponse("/login", 303)
    response.delete_cookie(auth.SESSION_COOKIE)
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never `//host` or a URL) is followed after signing in."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


# --- overview ---------------------------------------------------------------------------------------


async def _overview_context(state: ApiState) -> dict[str, Any]:
    async with state.db.system_tx() as conn:
        queues = await ops_queues.queue_stats(conn, state.settings)
        series = await overview.throughput(conn)
        open_alerts = await ops_alerts.list_alerts(conn, ["open", "acknowledged"], 50)
    await ops_queues.add_redis_depths(state.redis, queues)
    processes = await health.read_health(state.redis)
    stale = state.settings.health_stale_after_s
    return {
        "queues": queues, "chart": throughput_chart(series), "alerts": open_alerts,
        "schedulers": overview.schedulers(processes, stale),
        "processes": [p for p in processes if p.age_s <= stale], "now": time.time(),
    }  # fmt: skip


async def overview_page(request: Request, state: ApiState, viewer: Viewer) -> Response:
    return _render(request, "overview.html", viewer, notice=request.query_params.get("notice"),
                   **await _overview_context(state))  # fmt: skip


async def overview_live(request: Request, state: ApiState, viewer: Viewer) -> Response:
    return _render(request, "_overview_live.html", viewer, **await _overview_context(state))


# --- jobs -------------------------------------------------------------------------------------------


async def _jobs_context(request: Request, state: ApiState) -> dict[str, Any]:
    params = dict(request.query_params)
    try:
        where = job_filter(params)
    except FilterError as exc:
        return {"params": params, "jobs": [], "filter_error": exc, "query": urlencode(params)}
    async with state.db.system_tx() as conn:
        found = await ops_jobs.list_jobs(conn, where, LIST_LIMIT)
    return {"params": params, "jobs": found, "filter_error": None, "query": urlencode(params), "limit": LIST_LIMIT}


async def jobs_page(request: Request, state: ApiState, viewer: Viewer) -> Response:
    return _render(request, "jobs.html", viewer, notice=request.query_params.get("notice"),
                   statuses=JOB_STATUSES, **await _jobs_context(request, state))  # fmt: skip


async def jobs_live(request: Request, state: ApiState, viewer: Viewer) -> Response:
    return _render(request, "_jobs_live.html", viewer, **await _jobs_context(request, state))


async def bulk(request: Request, state: ApiState, viewer: Viewer) -> Response:
    """Retry or cancel every job the filter matches: first a page saying how many and which, then,
    confirmed, the action (the selection is made again: what matches then is what is acted on)."""
    form: dict[str, str] = request.state.form
    verb = form.get("action")
    if verb not in ("retry", "cancel"):
        return _render(request, "denied.html", viewer, 422, what=f"do {verb!r} (retry or cancel only)")
    params = {k: v for k, v in form.items() if k in FILTER_FIELDS and v}
    try:
        where = job_filter(params)
    except FilterError as exc:
        return RedirectResponse(f"/jobs?{urlencode({**params, 'notice': str(exc)})}", 303)
    defaults = ops_jobs.RETRYABLE if verb == "retry" else ops_jobs.CANCELLABLE
    async with state.db.system_tx() as conn:
        selected = await ops_jobs.select_jobs(conn, None, where, defaults, BULK_LIMIT, latest_of_key=verb == "retry")
        if form.get("confirmed") != "yes":
            return _render(request, "confirm.html", viewer, verb=verb, jobs=selected[:PREVIEW], count=len(selected),
                           params=params, limit=BULK_LIMIT)  # fmt: skip
        target = {"filter": where.as_target()}
        if verb == "cancel":
            report = await ops_jobs.cancel_jobs(conn, [j["id"] for j in selected], viewer.actor, target)
            notice = f"cancelled {len(report.cancelled)} job(s)" + (
                f"; {len(report.skipped)} had finished meanwhile" if report.skipped else "")  # fmt: skip
    if verb == "retry":
        retried = await ops_jobs.retry_jobs(state.queue, selected, viewer.actor, target)
        made = sum(not r["duplicate"] for r in retried.retried)
        notice = f"retried {made} job(s)" + (f"; {len(retried.failed)} refused" if retried.failed else "")
    return RedirectResponse(f"/jobs?{urlencode({**params, 'notice': notice})}", 303)


# --- one job ----------------------------------------------------------------------------------------


async def _job_or_404(request: Request, state: ApiState, viewer: Viewer) -> dict[str, Any] | Response:
    try:
        job_id = UUID(request.path_params["job_id"])
    except ValueError:
        return _render(request, "missing.html", viewer, 404, what=f"job {request.path_params['job_id']!r}")
    async with state.db.system_tx() as conn:
        job = await ops_jobs.get_job(conn, job_id)
    return job if job is not None else _render(request, "missing.html", viewer, 404, what=f"job {job_id}")


async def job_page(request: Request, state: ApiState, viewer: Viewer) -> Response:
    job = await _job_or_404(request, state, viewer)
    if isinstance(job, Response):
        return job
    return _render(request, "job.html", viewer, job=job, notice=request.query_params.get("notice"),
                   retryable=ops_jobs.RETRYABLE, cancellable=ops_jobs.CANCELLABLE)  # fmt: skip


async def job_live(request: Request, state: ApiState, viewer: Viewer) -> Response:
    job = await _job_or_404(request, state, viewer)
    if isinstance(job, Response):
        return job
    return _render(request, "_job_live.html", viewer, job=job, retryable=ops_jobs.RETRYABLE,
                   cancellable=ops_jobs.CANCELLABLE)  # fmt: skip


async def job_retry(request: Request, state: ApiState, viewer: Viewer) -> Response:
    job = await _job_or_404(request, state, viewer)
    if isinstance(job, Response):
        return job
    if job["status"] not in ops_jobs.RETRYABLE:
        return _back(f"/jobs/{job['id']}", f"not retried: it is {job['status']} (only failed or cancelled jobs are)")
    report = await ops_jobs.retry_jobs(state.queue, [job], viewer.actor, {"id": str(job["id"])})
    if report.failed:
        return _back(f"/jobs/{job['id']}", f"not retried: {report.failed[0]['error']}")
    (done,) = report.retried
    note = "already active under its key" if done["duplicate"] else "re-queued as a new record"
    return _back(f"/jobs/{done['new_id']}", f"retried job {job['id']}: {note}")


async def job_cancel(request: Request, state: ApiState, viewer: Viewer) -> Response:
    job = await _job_or_404(request, state, viewer)
    if isinstance(job, Response):
        return job
    async with state.db.system_tx() as conn:
        report = await ops_jobs.cancel_jobs(conn, [job["id"]], viewer.actor, {"id": str(job["id"])})
    notice = "cancelled" if report.cancelled else f"not cancelled: it is {report.skipped[0]['status']}"
    return _back(f"/jobs/{job['id']}", notice)


def _back(path: str, notice: str) -> Response:
    return RedirectResponse(f"{path}?{urlencode({'notice': notice})}", 303)


# --- queues and alerts ------------------------------------------------------------------------------


async def queue_action(request: Request, state: ApiState, viewer: Viewer) -> Response:
    name, verb = request.path_params["name"], request.path_params["verb"]
    if verb not in ("pause", "resume"):
        return _render(request, "missing.html", viewer, 404, what=f"queue action {verb!r}")
    try:
        async with state.db.system_tx() as conn:
            if verb == "pause":
                reason = request.state.form.get("reason") or None
                changed = await ops_queues.pause(conn, state.settings, name, viewer.actor, reason)
            else:
                changed = await ops_queues.resume(conn, state.settings, name, viewer.actor)
    except ops_queues.UnknownQueue as exc:
        return _back("/", str(exc))
    done = "paused" if verb == "pause" else "resumed"
    return _back("/", f"{done} queue {name}" if changed else f"queue {name} was already {done}: nothing changed")


async def alert_action(request: Request, state: ApiState, viewer: Viewer) -> Response:
    try:
        alert_id = UUID(request.path_params["alert_id"])
    except ValueError:
        return _back("/", f"no alert {request.path_params['alert_id']!r}")
    verb = request.path_params["verb"]
    if verb not in ("ack", "resolve"):
        return _render(request, "missing.html", viewer, 404, what=f"alert action {verb!r}")
    act = ops_alerts.acknowledge if verb == "ack" else ops_alerts.resolve
    async with state.db.system_tx() as conn:
        done = await act(conn, alert_id, viewer.actor)
    word = "acknowledged" if verb == "ack" else "resolved"
    return _back("/", f"{word} alert {alert_id}" if done else f"alert {alert_id} was not open: nothing changed")


def routes(state: ApiState) -> list[BaseRoute]:
    def plain(handler: Callable[[Request, ApiState], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await handler(request, state)

        return endpoint

    return [
        Route("/login", plain(login_page), methods=["GET"]),
        Route("/login", plain(login), methods=["POST"]),
        Route("/logout", plain(logout), methods=["POST"]),
        Route("/", _page(state, overview_page), methods=["GET"]),
        Route("/live/overview", _page(state, overview_live), methods=["GET"]),
        Route("/jobs", _page(state, jobs_page), methods=["GET"]),
        Route("/live/jobs", _page(state, jobs_live), methods=["GET"]),
        Route("/jobs/bulk", _page(state, bulk, action="act"), methods=["POST"]),
        Route("/jobs/{job_id}", _page(state, job_page), methods=["GET"]),
        Route("/live/jobs/{job_id}", _page(state, job_live), methods=["GET"]),
        Route("/jobs/{job_id}/retry", _page(state, job_retry, action="act"), methods=["POST"]),
        Route("/jobs/{job_id}/cancel", _page(state, job_cancel, action="act"), methods=["POST"]),
        Route("/queues/{name}/{verb:str}", _page(state, queue_action, action="act"), methods=["POST"]),
        Route("/alerts/{alert_id}/{verb:str}", _page(state, alert_action, action="act"), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

