"""The dashboard over real HTTP (a `geniehelper web` process): signing in, who may act, CSRF, filters,
bulk actions after a confirmation, and what a missing page says. The browser test drives the same
pages with Chromium (test_dashboard_browser.py)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from geniehelper.settings import WebToken
from geniehelper.web import auth
from tests.conftest import make_creator
from tests.helpers import web_process

TOKENS = {
    "reader": {"token": "dash-read-token-0123456789abc", "role": "read"},
    "ops.alice": {"token": "dash-admin-token-0123456789ab", "role": "admin"},
    "svc": {"token": "dash-service-token-0123456789", "role": "service"},
}
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
async def base_url(project_env: dict[str, str], database_url: str, redis_url: str) -> AsyncIterator[str]:
    async with web_process(dict(project_env, DATABASE_URL=database_url, REDIS_URL=redis_url), TOKENS) as (base, _):
        yield base


@contextlib.asynccontextmanager
async def signed_in(base_url: str, name: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.post("/login", data={"token": TOKENS[name]["token"], "next": "/jobs"})
        assert response.status_code == 303 and response.headers["location"] == "/jobs", response.text
        yield http


def auth_tokens() -> list[WebToken]:
    return [WebToken(name=name, **fields) for name, fields in TOKENS.items()]


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


async def test_signing_in_is_required_and_refuses_unknown_and_service_tokens(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        first = await http.get("/jobs")
        assert first.status_code == 303 and first.headers["location"] == "/login?next=%2Fjobs"
        assert (await http.get("/live/overview", headers={"X-Live": "1"})).status_code == 401  # live.js → sign-in
        assert (await http.post("/queues/default/pause", data={"csrf": "x"})).status_code == 401
        unknown = await http.post("/login", data={"token": "not-a-token-at-all-0123456789"})
        assert unknown.status_code == 401 and "unknown token" in unknown.text
        service = await http.post("/login", data={"token": TOKENS["svc"]["token"]})
        assert service.status_code == 401 and "a service token may not read the dashboard" in service.text
        elsewhere = await http.post("/login", data={"token": TOKENS["reader"]["token"], "next": "//evil.test/x"})
        assert elsewhere.status_code == 303 and elsewhere.headers["location"] == "/"  # never off-site
        cookie = http.cookies[auth.SESSION_COOKIE]
        assert TOKENS["reader"]["token"] not in cookie and cookie.startswith("reader.")
        assert (await http.get("/")).status_code == 200
        await http.post("/logout")
        assert (await http.get("/")).status_code == 303


async def test_a_read_token_sees_everything_is_offered_no_action_and_may_not_post_one(
    base_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    job_id = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_echo', 'default', 'dash-read', '{\"text\": \"r\"}', 'failed', 'read-only boom', now())"
        " returning id", creator,
    )  # fmt: skip
    async with signed_in(base_url, "reader") as http:
        overview = await http.get("/")
        assert overview.status_code == 200 and 'data-queue="default"' in overview.text
        assert "Pause</button>" not in overview.text and "read only" in overview.text
        page = await http.get(f"/jobs/{job_id}")
        assert page.status_code == 200 and "read-only boom" in page.text and 'id="retry"' not in page.text
        session = http.cookies[auth.SESSION_COOKIE]
        token = auth.token_for(auth_tokens(), TOKENS["reader"]["token"])
        assert token is not None
        csrf = auth.csrf_value(token, session)  # a valid form value: the role alone refuses it
        refused = await http.post(f"/jobs/{job_id}/retry", data={"csrf": csrf})
        assert refused.status_code == 403 and "an admin token may" in refused.text
        assert (await http.post("/queues/default/pause", data={"csrf": csrf})).status_code == 403
    assert await owner.fetchval("select count(*) from media_jobs where job_key = 'dash-read'") == 1
    assert await owner.fetchval("select count(*) from queue_pauses") == 0


async def test_admin_actions_need_the_form_value_and_are_recorded_under_the_token_name(
    base_url: str, owner: asyncpg.Connection
) -> None:
    async with signed_in(base_url, "ops.alice") as http:
        overview = await http.get("/")
        assert 'action="/queues/bulk/pause"' in overview.text
        forged = await http.post("/queues/bulk/pause", data={"csrf": "0" * 32})
        assert forged.status_code == 403 and "stale" in forged.text
        assert await owner.fetchval("select count(*) from queue_pauses") == 0

        paused = await http.post("/queues/bulk/pause", data={"csrf": csrf_of(overview), "reason": "import storm"})
        assert paused.status_code == 303 and "paused+queue+bulk" in paused.headers["location"]
        row = await owner.fetchrow("select paused_by, reason from queue_pauses where queue = 'bulk'")
        assert row is not None and (row["paused_by"], row["reason"]) == ("web:ops.alice", "import storm")
        again = await http.get("/")
        bulk_row = again.text[again.text.index('data-queue="bulk"'):]
        assert "paused</strong> by web:ops.alice" in bulk_row[: bulk_row.index("</tr>")]
        resumed = await http.post("/queues/bulk/resume", data={"csrf": csrf_of(again)})
        assert resumed.status_code == 303
        unknown = await http.post("/queues/nope/pause", data={"csrf": csrf_of(again)})
        assert unknown.status_code == 303 and "nope" in unknown.headers["location"]
    actions = await owner.fetch("select actor, action, affected from ops_actions order by id")
    assert [(a["actor"], a["action"], a["affected"]) for a in actions] == [
        ("web:ops.alice", "queues.pause", 1), ("web:ops.alice", "queues.resume", 1),
    ]  # fmt: skip
    assert await owner.fetchval("select count(*) from queue_pauses") == 0


async def test_bulk_retry_shows_what_matches_first_then_requeues_each_once(
    base_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    for i in range(3):
        await owner.execute(
            "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
            " values ($1, 't_echo', 'default', $2, '{\"text\": \"b\"}', 'failed', 'upstream 502 bulk-case', now())",
            creator, f"dash-bulk-{i}",
        )  # fmt: skip
    async with signed_in(base_url, "ops.alice") as http:
        listing = await http.get("/jobs", params={"error": "bulk-case"})
        assert listing.text.count('data-job="') == 3
        form = {"csrf": csrf_of(listing), "error": "bulk-case", "action": "retry"}
        confirm = await http.post("/jobs/bulk", data=form)
        assert confirm.status_code == 200 and "Retry 3 jobs?" in confirm.text
        assert await owner.fetchval("select count(*) from media_jobs where error = 'upstream 502 bulk-case'") == 3
        assert await owner.fetchval("select count(*) from media_jobs where job_key like 'dash-bulk-%'") == 3

        done = await http.post("/jobs/bulk", data={**form, "confirmed": "yes"})
        assert done.status_code == 303 and "retried+3+job" in done.headers["location"]
        again = await http.post("/jobs/bulk", data={**form, "confirmed": "yes"})  # a double submit
        assert again.status_code == 303
    rows = await owner.fetch("select job_key, status from media_jobs where job_key like 'dash-bulk-%'")
    assert sorted((r["job_key"], r["status"]) for r in rows) == sorted(
        [(f"dash-bulk-{i}", s) for i in range(3) for s in ("failed", "queued")]
    )
    action = await owner.fetchrow("select actor, target from ops_actions where action = 'jobs.retry' order by id")
    assert action is not None and action["actor"] == "web:ops.alice"
    assert action["target"]["filter"]["error"] == "bulk-case" and len(action["target"]["new_jobs"]) == 3


async def test_a_bad_filter_names_its_field_and_reason_and_missing_jobs_answer_404(base_url: str) -> None:
    async with signed_in(base_url, "reader") as http:
        bad = await http.get("/jobs", params={"older_than": "soon", "status": "failed"})
        assert bad.status_code == 200 and "Filter older_than:" in bad.text and "soon" in bad.text
        status = await http.get("/live/jobs", params={"status": "exploded"}, headers={"X-Live": "1"})
        assert "Filter status: &#39;exploded&#39; is not one of" in status.text
        missing = await http.get(f"/jobs/{uuid.uuid4()}")
        assert missing.status_code == 404 and "There is no job" in missing.text
        assert (await http.get("/jobs/not-a-uuid")).status_code == 404


async def test_alerts_are_acknowledged_and_resolved_from_the_overview(base_url: str, owner: asyncpg.Connection) -> None:
    alert_id = await owner.fetchval("insert into ops_alerts (rule, dedup_key, severity, summary)"
                                    " values ('queue_age', 'queue_age:dash', 'warning', 'dash backlog') returning id")
    async with signed_in(base_url, "ops.alice") as http:
        overview = await http.get("/")
        assert "dash backlog" in overview.text and f'action="/alerts/{alert_id}/ack"' in overview.text
        acked = await http.post(f"/alerts/{alert_id}/ack", data={"csrf": csrf_of(overview)})
        assert acked.status_code == 303 and "acknowledged" in acked.headers["location"]
        again = await http.get("/")
        assert "open by" not in again.text and "acknowledged by web:ops.alice" in again.text
        resolved = await http.post(f"/alerts/{alert_id}/resolve", data={"csrf": csrf_of(again)})
        assert resolved.status_code == 303
        assert "dash backlog" not in (await http.get("/")).text
    row = await owner.fetchrow("select status, acknowledged_by from ops_alerts where id = $1", alert_id)
    assert row is not None and (row["status"], row["acknowledged_by"]) == ("resolved", "web:ops.alice")
    actions = await owner.fetch("select action from ops_actions where action like 'alert.%'")
    assert sorted(a["action"] for a in actions) == ["alert.acknowledge", "alert.resolve"]


def test_a_session_ends_when_its_token_is_removed_expires_or_is_tampered_with() -> None:
    tokens = auth_tokens()
    reader = tokens[0]
    value = auth.session_value(reader, now=1_000.0)
    assert auth.session_token(tokens, value, now=1_001.0) == reader
    assert auth.session_token(tokens, value, now=1_000.0 + auth.SESSION_S + 1) is None  # expired
    assert auth.session_token(tokens[1:], value, now=1_001.0) is None  # the token was taken out of WEB_TOKENS
    name, expires, signature = value.split(".")
    assert auth.session_token(tokens, f"{name}.{int(expires) + 3600}.{signature}", now=1_001.0) is None  # extended
    assert auth.session_token(tokens, f"ops.alice.{expires}.{signature}", now=1_001.0) is None  # another name
    dotted = auth.session_value(tokens[1], now=1_000.0)  # "ops.alice": a name with a dot
    assert auth.session_token(tokens, dotted, now=1_001.0) == tokens[1]
