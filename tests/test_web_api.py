"""The HTTP API over real HTTP: a `geniehelper web` process on the module's database and Redis."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_creator
from tests.helpers import BIN, web_process

TOKENS = {
    "svc": {"token": "service-token-0123456789abcdef", "role": "service"},
    "reader": {"token": "read-token-0123456789abcdefgh", "role": "read"},
    "ops": {"token": "admin-token-0123456789abcdefgh", "role": "admin"},
}
SEEN: set[tuple[str, str, int]] = set()  # (method, route, status) answered in this module


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]['token']}"}


class Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, method: str, route: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        SEEN.add((method.lower(), route, response.status_code))
        return response


@pytest.fixture
async def api(project_env: dict[str, str], database_url: str, redis_url: str) -> AsyncIterator[Api]:
    env = dict(project_env, DATABASE_URL=database_url, REDIS_URL=redis_url)
    async with web_process(env, TOKENS) as (base, _), httpx.AsyncClient(base_url=base, timeout=10) as http:
        yield Api(http)


async def test_enqueue_validates_each_field_refuses_over_quota_and_repeats_idempotently(
    api: Api, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner, tier="starter")  # posts_published: 5 a month (t_quota)
    body = {"job": "t_echo", "payload": {"text": "hi"}, "user_id": str(creator)}
    keyed = {**auth("svc"), "Idempotency-Key": "k1"}
    first = await api.call("POST", "/api/jobs", "/api/jobs", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    created = first.json()
    assert (created["job"], created["queue"], created["key"], created["duplicate"]) == (
        "t_echo", "default", "k1", False,
    )  # fmt: skip
    again = await api.call("POST", "/api/jobs", "/api/jobs", json=body, headers=keyed)
    assert again.status_code == 200 and again.json()["id"] == created["id"] and again.json()["duplicate"] is True
    assert await owner.fetchval("select count(*) from media_jobs where user_id = $1 and job_key = 'k1'", creator) == 1

    extra = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                           json={**body, "priority": 1})  # fmt: skip
    assert extra.status_code == 422 and extra.json()["errors"] == [{"field": "priority", "reason": "unknown field"}]
    bad_fields = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                                json={"job": "", "payload": [], "user_id": "nope"})  # fmt: skip
    assert bad_fields.status_code == 422
    assert {e["field"] for e in bad_fields.json()["errors"]} == {"job", "payload", "user_id"}
    payload_errors = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"), json={
        "job": "t_echo", "payload": {"text": "x" * 101, "times": 0}, "user_id": str(creator),
    })  # fmt: skip
    assert payload_errors.status_code == 422
    assert {e["field"] for e in payload_errors.json()["errors"]} == {"payload.text", "payload.times"}
    unknown = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                             json={"job": "nope", "user_id": str(creator)})  # fmt: skip
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "job"
    no_creator = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                                json={"job": "t_echo", "payload": {"text": "a"}, "user_id": str(uuid.uuid4())})
    assert no_creator.status_code == 422 and no_creator.json()["errors"][0]["field"] == "user_id"
    not_json = await api.call("POST", "/api/jobs", "/api/jobs", content=b"{nope",
                              headers={**auth("svc"), "content-type": "application/json"})  # fmt: skip
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "body"

    for i in range(5):
        ok = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                            json={"job": "t_quota", "payload": {"text": f"p{i}"}, "user_id": str(creator)})
        assert ok.status_code == 201
    refused = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("svc"),
                             json={"job": "t_quota", "payload": {"text": "p6"}, "user_id": str(creator)})
    assert refused.status_code == 403
    assert refused.json()["error"] == "tier_limit_reached" and refused.json()["reason"] == "limit_reached"
    assert "posts_published" in refused.json()["message"]


async def test_tokens_and_roles_read_and_retry(api: Api, owner: asyncpg.Connection) -> None:
    creator = await make_creator(owner)
    failed = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_echo', 'default', 'api-retry', '{\"text\": \"again\"}', 'failed', 'boom', now())"
        " returning id", creator,
    )  # fmt: skip
    route = "/api/jobs/{job_id}"
    missing = await api.call("GET", route, f"/api/jobs/{failed}")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = await api.call("GET", route, f"/api/jobs/{failed}", headers={"Authorization": "Bearer not-a-real-token"})
    assert wrong.status_code == 401
    service_reads = await api.call("GET", route, f"/api/jobs/{failed}", headers=auth("svc"))
    assert service_reads.status_code == 403  # service tokens may enqueue only
    read = await api.call("GET", route, f"/api/jobs/{failed}", headers=auth("reader"))
    assert read.status_code == 200 and read.json()["status"] == "failed" and read.json()["error"] == "boom"
    assert (await api.call("GET", route, f"/api/jobs/{uuid.uuid4()}", headers=auth("reader"))).status_code == 404
    assert (await api.call("GET", route, "/api/jobs/not-a-uuid", headers=auth("reader"))).status_code == 422
    reader_enqueues = await api.call("POST", "/api/jobs", "/api/jobs", headers=auth("reader"),
                                     json={"job": "t_echo", "payload": {"text": "a"}, "user_id": str(creator)})
    assert reader_enqueues.status_code == 403

    retry_route = "/api/jobs/{job_id}/retry"
    refused = await api.call("POST", retry_route, f"/api/jobs/{failed}/retry", headers=auth("reader"))
    assert refused.status_code == 403
    retried = await api.call("POST", retry_route, f"/api/jobs/{failed}/retry", headers=auth("ops"))
    assert retried.status_code == 201 and retried.json()["duplicate"] is False
    new_id = uuid.UUID(retried.json()["new_id"])
    row = await owner.fetchrow("select status, job_key, payload from media_jobs where id = $1", new_id)
    assert row is not None and (row["status"], row["job_key"], row["payload"]["text"]) == (
        "queued", "api-retry", "again",
    )  # fmt: skip
    action = await owner.fetchrow("select actor, action from ops_actions order by id desc limit 1")
    assert action is not None and (action["actor"], action["action"]) == ("api:ops", "jobs.retry")
    not_finished = await api.call("POST", retry_route, f"/api/jobs/{new_id}/retry", headers=auth("ops"))
    assert not_finished.status_code == 409
    gone = await api.call("POST", retry_route, f"/api/jobs/{uuid.uuid4()}/retry", headers=auth("ops"))
    assert gone.status_code == 404

    queues = await api.call("GET", "/api/queues", "/api/queues", headers=auth("reader"))
    assert queues.status_code == 200
    default = next(q for q in queues.json()["queues"] if q["queue"] == "default")
    assert default["queued"] >= 1 and default["redis_depth"] >= 1
    assert (await api.call("GET", "/api/queues", "/api/queues", headers=auth("svc"))).status_code == 403


async def test_metrics_show_the_queues_stalled_jobs_alerts_and_live_processes(
    api: Api, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error_kind)"
        " values ($1, 't_echo', 'default', 'm-stalled', '{\"text\": \"s\"}', 'queued', 'lease_expired')", creator,
    )  # fmt: skip
    await owner.execute("insert into ops_alerts (rule, dedup_key, severity, summary)"
                        " values ('queue_age', 'queue_age:m', 'warning', 'x')")  # fmt: skip
    assert (await api.call("GET", "/metrics", "/metrics", headers=auth("svc"))).status_code == 403
    response = await api.call("GET", "/metrics", "/metrics", headers=auth("reader"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text) for s in family.samples
    }  # fmt: skip
    queued = await owner.fetchval("select count(*) from media_jobs where queue = 'default' and status = 'queued'")
    assert found[("geniehelper_queue_jobs", (("queue", "default"), ("state", "queued")))] == queued
    assert found[("geniehelper_jobs_stalled", (("job", "t_echo"),))] >= 1
    assert found[("geniehelper_alerts_open", (("rule", "queue_age"), ("severity", "warning")))] >= 1
    assert found[("geniehelper_processes_live", (("role", "web"),))] >= 1
    assert ("geniehelper_queue_redis_depth", (("queue", "default"),)) in found


async def test_the_openapi_description_matches_the_endpoints(api: Api) -> None:
    """Runs last in the module: every (route, status) the other tests saw is documented."""
    response = await api.call("GET", "/api/openapi.json", "/api/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    documented = {(method, path, int(code)) for path, ops in spec["paths"].items()
                  for method, op in ops.items() for code in op["responses"]}  # fmt: skip
    assert SEEN - documented == set()
    routes = {(method, path) for method, path, _ in SEEN}
    assert routes == {(m, p) for m, p, _ in documented}  # every documented operation was exercised


def test_bad_tokens_stop_the_web_process_with_one_line_that_never_shows_a_secret(project_env: dict[str, str]) -> None:
    secret = "short-but-secret"
    env = dict(project_env, WEB_TOKENS=json.dumps({"ci": {"token": secret, "role": "god"}}))
    done = subprocess.run([str(BIN / "geniehelper"), "web"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and secret not in done.stderr and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("geniehelper: invalid setting WEB_TOKENS='***'") and "token 'ci'" in line
    assert "at least 24 characters" in line and "role" in line


def test_the_web_process_refuses_to_listen_beyond_loopback_without_tokens(project_env: dict[str, str]) -> None:
    env = {k: v for k, v in project_env.items() if k != "WEB_TOKENS"} | {"WEB_HOST": "0.0.0.0"}
    done = subprocess.run([str(BIN / "geniehelper"), "web"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "geniehelper: WEB_HOST=0.0.0.0 is beyond loopback: set WEB_TOKENS first"
