"""HttpPlatformClient against the sandbox platform over real HTTP on loopback.

One sandbox server serves the module; each test creates its own account, so tests do not share data.
Faults are cleared after every test. The sandbox runs on a manual clock so growth is exact.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import structlog

from geniehelper.platforms import (
    AuthExpired,
    HttpPlatformClient,
    OutcomeUnknown,
    PermanentPlatformError,
    PostToPublish,
    RateLimited,
    Transaction,
    TransientPlatformError,
    parse_retry_after,
)
from geniehelper.platforms.sandbox import SandboxPlatform, run_sandbox


class ManualClock:
    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sandbox:
    base_url: str
    clock: ManualClock
    http: httpx.AsyncClient

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self.http.request(method, self.base_url + path, json=body)
        assert response.status_code < 300, response.text
        return response.json()

    async def new_account(self, **spec: Any) -> tuple[str, str]:
        created = await self.admin("POST", "/admin/accounts", spec)
        return created["account_id"], created["token"]

    async def fault(self, **spec: Any) -> None:
        await self.admin("POST", "/admin/faults", spec)

    async def posts_of(self, account_id: str) -> list[dict[str, Any]]:
        listed = await self.admin("GET", f"/admin/accounts/{account_id}/posts")
        items: list[dict[str, Any]] = listed["items"]
        return items

    def client(self, token: str, *, timeout_s: float = 5.0) -> HttpPlatformClient:
        return HttpPlatformClient(self.base_url, token, self.http, timeout_s=timeout_s)


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    clock = ManualClock()
    platform = SandboxPlatform(clock=clock, followers_per_hour=360, subscribers_per_hour=36, views_per_hour=3_600)
    async with run_sandbox(platform=platform) as base_url, httpx.AsyncClient() as http:
        yield Sandbox(base_url=base_url, clock=clock, http=http)


@pytest.fixture(autouse=True)
async def _clear_faults(sandbox: Sandbox) -> AsyncIterator[None]:
    yield
    await sandbox.admin("DELETE", "/admin/faults")


POST = PostToPublish(text="New set out tonight", media_urls=("https://cdn.example/a.jpg",))


# --- auth ------------------------------------------------------------------------------------------------


async def test_check_auth_then_auth_expired_after_expire_token(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account(username="luna")
    client = sandbox.client(token)

    info = await client.check_auth()
    assert (info.account_id, info.username) == (account_id, "luna")

    await sandbox.admin("POST", f"/admin/accounts/{account_id}/expire-token")
    with pytest.raises(AuthExpired) as caught:
        await client.check_auth()
    assert caught.value.status_code == 401
    assert not caught.value.retryable
    assert token not in str(caught.value)
    assert token not in repr(client)

    rotated = await sandbox.admin("POST", f"/admin/accounts/{account_id}/rotate-token")
    assert (await sandbox.client(rotated["token"]).check_auth()).account_id == account_id


async def test_accounts_are_isolated(sandbox: Sandbox) -> None:
    _, token_a = await sandbox.new_account()
    _, token_b = await sandbox.new_account()
    post_a = await sandbox.client(token_a).publish_post(POST, idempotency_key="iso-1")
    with pytest.raises(PermanentPlatformError) as caught:
        await sandbox.client(token_b).get_post_metrics(post_a.external_post_id)
    assert caught.value.status_code == 404
    assert await sandbox.client(token_b).find_post_by_idempotency_key("iso-1") is None


# --- publishing and idempotency --------------------------------------------------------------------


async def test_publish_returns_external_id_and_sends_the_key(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    published = await sandbox.client(token).publish_post(POST, idempotency_key="publish_post:1")
    assert published.external_post_id.startswith("post_")
    assert published.idempotency_key == "publish_post:1"

    stored = await sandbox.posts_of(account_id)
    assert [(p["external_post_id"], p["idempotency_key"], p["text"]) for p in stored] == [
        (published.external_post_id, "publish_post:1", POST.text)
    ]


async def test_same_idempotency_key_twice_creates_one_post(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    client = sandbox.client(token)

    first = await client.publish_post(POST, idempotency_key="publish_post:42")
    again = await client.publish_post(POST, idempotency_key="publish_post:42")
    assert again.external_post_id == first.external_post_id
    assert len(await sandbox.posts_of(account_id)) == 1

    other = await client.publish_post(POST, idempotency_key="publish_post:43")
    assert other.external_post_id != first.external_post_id
    assert len(await sandbox.posts_of(account_id)) == 2

    # The same key for different content is refused rather than silently answered with the old post.
    with pytest.raises(PermanentPlatformError) as caught:
        await client.publish_post(PostToPublish(text="something else"), idempotency_key="publish_post:42")
    assert caught.value.status_code == 422
    assert len(await sandbox.posts_of(account_id)) == 2


async def test_send_message_is_idempotent(sandbox: Sandbox) -> None:
    _, token = await sandbox.new_account(n_fans=3)
    client = sandbox.client(token)

    first = await client.send_message("fan_000002", "thanks!", idempotency_key="dm:1")
    again = await client.send_message("fan_000002", "thanks!", idempotency_key="dm:1")
    assert again.message_id == first.message_id

    page = await client.list_messages(None, 100)
    sent = [m for m in page.items if m.direction == "out"]
    assert [(m.message_id, m.fan_id, m.text) for m in sent] == [(first.message_id, "fan_000002", "thanks!")]

    with pytest.raises(PermanentPlatformError) as caught:
        await client.send_message("fan_999999", "hello?", idempotency_key="dm:2")
    assert caught.value.status_code == 404


# --- faults ----------------------------------------------------------------------------------------------


async def test_rate_limit_raises_rate_limited_with_retry_after(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    client = sandbox.client(token)

    await sandbox.fault(kind="rate_limit", count=1, path_prefix="/v1/posts", retry_after_s=2)
    with pytest.raises(RateLimited) as caught:
        await client.publish_post(POST, idempotency_key="rl-1")
    assert caught.value.retry_after_s == 2
    assert caught.value.retryable
    assert await sandbox.posts_of(account_id) == []

    # The fault was for one request: the retry goes through.
    assert (await client.publish_post(POST, idempotency_key="rl-1")).external_post_id

    await sandbox.fault(kind="rate_limit", path_prefix="/v1/stats", retry_after_s=20, retry_after_format="http_date")
    with pytest.raises(RateLimited) as caught:
        await client.get_account_stats()
    assert 17 <= caught.value.retry_after_s <= 20  # an HTTP date has one-second resolution

    await sandbox.fault(kind="rate_limit", path_prefix="/v1/stats", retry_after_format="none")
    with pytest.raises(RateLimited) as caught:
        await client.get_account_stats()
    assert caught.value.retry_after_s == 30


async def test_faults_can_target_one_account(sandbox: Sandbox) -> None:
    target_id, target_token = await sandbox.new_account()
    _, bystander_token = await sandbox.new_account()
    await sandbox.fault(kind="server_error", count=5, path_prefix="/v1/me", account_id=target_id)
    assert await sandbox.client(bystander_token).check_auth()
    with pytest.raises(TransientPlatformError):
        await sandbox.client(target_token).check_auth()


async def test_server_error_is_transient_and_does_nothing(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    client = sandbox.client(token)

    await sandbox.fault(kind="server_error", count=2, path_prefix="/v1/posts", status=503)
    for _ in range(2):
        with pytest.raises(TransientPlatformError) as caught:
            await client.publish_post(POST, idempotency_key="5xx-1")
        assert caught.value.status_code == 503
        assert caught.value.retryable
    assert await sandbox.posts_of(account_id) == []

    published = await client.publish_post(POST, idempotency_key="5xx-1")
    assert [p["external_post_id"] for p in await sandbox.posts_of(account_id)] == [published.external_post_id]


async def test_accept_then_timeout_is_outcome_unknown_and_lookup_finds_one_post(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    client = sandbox.client(token, timeout_s=0.5)
    key = "publish_post:7f3a"

    await sandbox.fault(kind="accept_then_timeout", path_prefix="/v1/posts", method="POST", delay_s=5)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as caught:
        await client.publish_post(POST, idempotency_key=key)
    assert time.monotonic() - started < 3, "the client must give up at its own timeout"
    assert caught.value.idempotency_key == key
    assert not caught.value.retryable

    # The platform did create it: the lookup settles the unknown outcome.
    found = await client.find_post_by_idempotency_key(key)
    assert found is not None
    assert found.idempotency_key == key
    stored = await sandbox.posts_of(account_id)
    assert [p["external_post_id"] for p in stored] == [found.external_post_id]

    # A retry with the same key returns the same post: still exactly one.
    assert (await client.publish_post(POST, idempotency_key=key)).external_post_id == found.external_post_id
    assert len(await sandbox.posts_of(account_id)) == 1
    assert await client.find_post_by_idempotency_key("never-used") is None


async def test_slow_read_past_the_client_timeout_is_transient(sandbox: Sandbox) -> None:
    _, token = await sandbox.new_account()
    client = sandbox.client(token, timeout_s=0.3)

    await sandbox.fault(kind="slow", path_prefix="/v1/stats", delay_s=3)
    with pytest.raises(TransientPlatformError) as caught:
        await client.get_account_stats()
    assert not isinstance(caught.value, OutcomeUnknown)
    assert "ReadTimeout" in str(caught.value)

    # Slow but within the timeout: the answer arrives.
    await sandbox.fault(kind="slow", path_prefix="/v1/stats", delay_s=0.1)
    assert (await sandbox.client(token, timeout_s=5).get_account_stats()).posts == 0


async def test_connection_refused_is_transient_even_for_a_write() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now: the request cannot have been sent, so retrying is safe.
    async with httpx.AsyncClient() as http:
        client = HttpPlatformClient(f"http://127.0.0.1:{port}", "tok", http, timeout_s=2)
        with pytest.raises(TransientPlatformError) as caught:
            await client.publish_post(POST, idempotency_key="never-sent")
    assert not isinstance(caught.value, OutcomeUnknown)
    assert "not sent" in str(caught.value)


# --- reads -------------------------------------------------------------------------------------------------


async def test_pagination_over_seeded_fans_returns_each_fan_once(sandbox: Sandbox) -> None:
    _, token = await sandbox.new_account(n_fans=237, n_transactions_per_fan=2, seed=7)
    client = sandbox.client(token)

    fan_ids: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await client.list_fans(cursor, 50)
        pages += 1
        fan_ids.extend(fan.fan_id for fan in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 5
    assert len(fan_ids) == 237
    assert len(set(fan_ids)) == 237

    transactions: list[Transaction] = []
    cursor = None
    while True:
        txn_page = await client.list_transactions(cursor, 200)
        transactions.extend(txn_page.items)
        if txn_page.next_cursor is None:
            break
        cursor = txn_page.next_cursor
    assert len({t.transaction_id for t in transactions}) == 474
    # Each fan's total spend is the sum of its transactions.
    first_fan = (await client.list_fans(None, 1)).items[0]
    assert first_fan.total_spent_cents == sum(t.amount_cents for t in transactions if t.fan_id == first_fan.fan_id)

    subscriptions = await client.list_subscriptions(None, 300)  # clamped to the platform's maximum of 200
    assert len(subscriptions.items) == 200
    assert subscriptions.next_cursor is not None


async def test_seeded_data_is_deterministic(sandbox: Sandbox) -> None:
    _, token_a = await sandbox.new_account(n_fans=20, seed=11)
    _, token_b = await sandbox.new_account(n_fans=20, seed=11)
    _, token_c = await sandbox.new_account(n_fans=20, seed=12)
    fans_a = (await sandbox.client(token_a).list_fans(None, 20)).items
    fans_b = (await sandbox.client(token_b).list_fans(None, 20)).items
    fans_c = (await sandbox.client(token_c).list_fans(None, 20)).items
    assert [f.username for f in fans_a] == [f.username for f in fans_b]
    assert [f.username for f in fans_a] != [f.username for f in fans_c]


async def test_bad_cursor_is_permanent(sandbox: Sandbox) -> None:
    _, token = await sandbox.new_account(n_fans=2)
    with pytest.raises(PermanentPlatformError) as caught:
        await sandbox.client(token).list_fans("not-a-cursor", 10)
    assert caught.value.status_code == 400


async def test_stats_and_metrics_change_over_time(sandbox: Sandbox) -> None:
    _, token = await sandbox.new_account(n_fans=10, base_followers=1_000, seed=3)
    client = sandbox.client(token)
    post = await client.publish_post(POST, idempotency_key="grow-1")

    before = await client.get_account_stats()
    metrics_before = await client.get_post_metrics(post.external_post_id)
    sandbox.clock.advance(3_600)
    after = await client.get_account_stats()
    metrics_after = await client.get_post_metrics(post.external_post_id)

    assert before.followers == 1_010
    assert after.followers - before.followers == 360
    assert after.subscribers - before.subscribers == 36
    assert (before.posts, after.posts) == (1, 1)
    assert after.as_of - before.as_of == timedelta(hours=1)
    assert metrics_after.views - metrics_before.views == 3_600
    assert metrics_after.likes > metrics_before.likes


# --- client hygiene ----------------------------------------------------------------------------------------


async def test_token_appears_in_no_log_line_nor_error(sandbox: Sandbox) -> None:
    account_id, token = await sandbox.new_account()
    client = sandbox.client(token, timeout_s=0.3)
    errors: list[Exception] = []
    with structlog.testing.capture_logs() as logs:
        await sandbox.fault(kind="server_error", path_prefix="/v1/me")
        await sandbox.fault(kind="slow", path_prefix="/v1/stats", delay_s=2)
        await sandbox.fault(kind="accept_then_timeout", path_prefix="/v1/posts", delay_s=2)
        for call in (client.check_auth, client.get_account_stats):
            try:
                await call()
            except Exception as exc:
                errors.append(exc)
        try:
            await client.publish_post(POST, idempotency_key="log-1")
        except Exception as exc:
            errors.append(exc)
        await sandbox.admin("POST", f"/admin/accounts/{account_id}/expire-token")
        try:
            await client.check_auth()
        except Exception as exc:
            errors.append(exc)
    assert [type(e) for e in errors] == [
        TransientPlatformError,
        TransientPlatformError,
        OutcomeUnknown,
        AuthExpired,
    ]
    assert logs, "failures are logged"
    assert all(token not in repr(line) for line in logs)
    assert all(token not in str(e) and token not in repr(e) for e in errors)
    # No exception chain keeps the httpx request (whose headers carry the token) in a rendered traceback.
    assert all(e.__cause__ is None and (e.__context__ is None or e.__suppress_context__) for e in errors)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 30.0),
        ("", 30.0),
        ("7", 7.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("soon", 30.0),
        ("nan", 30.0),
        (format_datetime(datetime(2030, 1, 1, 0, 1, 30, tzinfo=UTC), usegmt=True), 90.0),
        (format_datetime(datetime(2029, 12, 31, 23, 0, tzinfo=UTC), usegmt=True), 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, now=datetime(2030, 1, 1, tzinfo=UTC)) == expected


# --- transport failures the sandbox cannot produce, classified on a mock transport -------------------------

_SENT_THEN_LOST = [
    httpx.ReadTimeout("timed out"),
    httpx.WriteTimeout("timed out"),
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("connection reset"),
]
_NOT_SENT = [
    httpx.ConnectError("refused"),
    httpx.ConnectTimeout("timed out"),
    httpx.PoolTimeout("no connection"),
]


def _raising(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer sekrit-token"
        raise exc

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("exc", _SENT_THEN_LOST, ids=lambda e: type(e).__name__)
async def test_lost_response_is_outcome_unknown_on_writes_and_transient_on_reads(exc: Exception) -> None:
    async with httpx.AsyncClient(transport=_raising(exc)) as http:
        client = HttpPlatformClient("http://platform.test", "sekrit-token", http)
        with pytest.raises(OutcomeUnknown) as unknown:
            await client.publish_post(POST, idempotency_key="k-1")
        assert unknown.value.idempotency_key == "k-1"
        with pytest.raises(OutcomeUnknown):
            await client.send_message("fan_1", "hi", idempotency_key="k-2")
        with pytest.raises(TransientPlatformError):
            await client.list_fans(None, 10)
        with pytest.raises(TransientPlatformError):
            await client.find_post_by_idempotency_key("k-1")
    assert "sekrit-token" not in str(unknown.value)


@pytest.mark.parametrize("exc", _NOT_SENT, ids=lambda e: type(e).__name__)
async def test_not_sent_is_transient_for_writes_too(exc: Exception) -> None:
    async with httpx.AsyncClient(transport=_raising(exc)) as http:
        client = HttpPlatformClient("http://platform.test", "sekrit-token", http)
        with pytest.raises(TransientPlatformError) as caught:
            await client.publish_post(POST, idempotency_key="k-1")
        assert not isinstance(caught.value, OutcomeUnknown)


async def test_malformed_success_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201 if request.method == "POST" else 200, text="<html>oops</html>")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = HttpPlatformClient("http://platform.test", "sekrit-token", http)
        with pytest.raises(OutcomeUnknown):  # accepted, but we cannot tell what was made
            await client.publish_post(POST, idempotency_key="k-1")
        with pytest.raises(PermanentPlatformError):
            await client.get_account_stats()


async def test_client_refuses_bad_arguments() -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="token"):
            HttpPlatformClient("http://platform.test", "bad\ntoken", http)
        with pytest.raises(ValueError, match="base_url"):
            HttpPlatformClient("platform.test/v1", "tok", http)
        client = HttpPlatformClient("http://platform.test", "tok", http)
        with pytest.raises(ValueError, match="idempotency key"):
            await client.publish_post(POST, idempotency_key="has a space")
        with pytest.raises(ValueError, match="idempotency key"):
            await client.publish_post(POST, idempotency_key="")
        with pytest.raises(ValueError, match="limit"):
            await client.list_fans(None, 0)


# --- the server itself -------------------------------------------------------------------------------------


async def test_run_sandbox_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        async with run_sandbox("0.0.0.0"):
            pass


async def test_stopping_the_sandbox_does_not_wait_for_held_requests() -> None:
    async with httpx.AsyncClient() as http:
        async with run_sandbox() as base_url:
            created = (await http.post(f"{base_url}/admin/accounts", json={})).json()
            await http.post(f"{base_url}/admin/faults", json={"kind": "slow", "delay_s": 60})
            client = HttpPlatformClient(base_url, created["token"], http, timeout_s=120)
            in_flight = asyncio.create_task(client.check_auth())
            await asyncio.sleep(0.2)
            started = time.monotonic()
        assert time.monotonic() - started < 5
        with pytest.raises(TransientPlatformError):
            await in_flight
        # And the port is closed: nothing is left serving.
        with pytest.raises(TransientPlatformError):
            await client.check_auth()
