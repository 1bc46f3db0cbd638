"""The dashboard in a real headless Chromium, against real `geniehelper web` and `geniehelper scheduler
job_monitor` processes: an alert appears on an open page without a reload, a failed job is retried from
its page, a queue is paused and resumed with its buttons, and a read token is offered none of them.

Chromium comes from the system (Debian's `chromium`; CHROMIUM names another binary). `./dev test`
installs it when it can; without it these tests skip, except under `.ci/run`, where
GENIEHELPER_REQUIRE_BROWSER=1 makes a missing browser a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.conftest import make_creator
from tests.helpers import ARTIFACTS, BIN, ROOT, spawn, web_process

TOKENS = {
    "ops": {"token": "browser-admin-token-0123456789", "role": "admin"},
    "viewer": {"token": "browser-read-token-01234567890", "role": "read"},
}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / ".data" / "test-output"))


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "no Chromium for the browser tests: apt-get install -y chromium (or set CHROMIUM)"
    if os.environ.get("GENIEHELPER_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def base_url(project_env: dict[str, str], database_url: str, redis_url: str) -> AsyncIterator[str]:
    """The web process and a job_monitor ticking every second, on the module's database."""
    env = dict(
        project_env, DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_FORMAT="json", PYTHONPATH=str(ROOT),
        JOB_PACKAGES=json.dumps(["tests.jobs_for_tests"]), JOB_MONITOR_INTERVAL_S="1", ALERT_EXPECTED_ROLES="[]",
        SCHEDULER_JITTER_S="0", HEALTH_INTERVAL_S="1",
    )  # fmt: skip
    monitor = spawn([str(BIN / "geniehelper"), "scheduler", "job_monitor"], env)
    try:
        async with web_process(env, TOKENS) as (base, _):
            yield base
    finally:
        monitor.proc.terminate()
        assert monitor.proc.wait(30) == 0, monitor.text()


async def sign_in(browser: Browser, base_url: str, name: str) -> Page:
    page = await browser.new_page(base_url=base_url, viewport={"width": 1280, "height": 900})
    await page.goto("/")
    await expect(page).to_have_url(f"{base_url}/login?next=%2F")
    await page.fill("input[name=token]", TOKENS[name]["token"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#queues")).to_be_visible()
    return page


async def test_on_call_sees_an_alert_arrive_retries_a_job_and_pauses_a_queue(
    browser: Browser, base_url: str, owner: asyncpg.Connection
) -> None:
    page = await sign_in(browser, base_url, "ops")
    await expect(page.locator("#schedulers")).to_contain_text("job_monitor")  # its health key, live

    # A worker died holding a job: job_monitor re-drives it, and the open page shows the alert.
    creator = await make_creator(owner)
    await owner.execute(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, attempts, max_attempts,"
        "                        started_at, lease_expires_at, worker_id, enqueued_at)"
        " values ($1, 't_echo', 'default', 'browser-stalled', '{\"text\": \"s\"}', 'processing', 1, 3,"
        "         now() - interval '1 minute', now() - interval '10 seconds', 'gone:1', now())", creator,
    )  # fmt: skip
    await expect(page.locator("#alerts")).to_contain_text("jobs_stalled:t_echo", timeout=20_000)
    await expect(page.locator("#alerts")).to_contain_text("1 t_echo job stalled")
    shot = OUTPUT / "dashboard-overview.png"
    await page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.append(shot)

    failed = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_echo', 'default', 'browser-failed', '{\"text\": \"f\"}', 'failed', 'gave up', now())"
        " returning id", creator,
    )  # fmt: skip
    await page.goto(f"/jobs/{failed}")
    await expect(page.locator("#job-status")).to_have_text("failed")
    await page.click("#retry")
    await expect(page.locator(".notice")).to_contain_text("re-queued as a new record")
    await expect(page.locator("#job-status")).to_have_text("queued")
    new_id = page.url.split("/jobs/")[1].split("?")[0]
    assert new_id != str(failed)
    row = await owner.fetchrow("select job_key, status from media_jobs where id = $1::uuid", new_id)
    assert row is not None and (row["job_key"], row["status"]) == ("browser-failed", "queued")

    await page.goto("/")
    default_row = page.locator('#queues tr[data-queue="default"]')
    await default_row.locator("button", has_text="Pause").click()
    await expect(page.locator(".notice")).to_have_text("paused queue default")
    await expect(page.locator('#queues tr[data-queue="default"]')).to_contain_text("paused by web:ops")
    assert await owner.fetchval("select paused_by from queue_pauses where queue = 'default'") == "web:ops"
    await page.locator('#queues tr[data-queue="default"]').locator("button", has_text="Resume").click()
    await expect(page.locator(".notice")).to_have_text("resumed queue default")
    assert await owner.fetchval("select count(*) from queue_pauses") == 0


async def test_a_read_token_is_offered_no_action_and_a_forged_post_is_refused(
    browser: Browser, base_url: str, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    failed = await owner.fetchval(
        "insert into media_jobs (user_id, job_name, queue, job_key, payload, status, error, finished_at)"
        " values ($1, 't_echo', 'default', 'browser-read', '{\"text\": \"r\"}', 'failed', 'nope', now())"
        " returning id", creator,
    )  # fmt: skip
    page = await sign_in(browser, base_url, "viewer")
    await expect(page.locator("header .who")).to_contain_text("read only")
    assert await page.locator("#queues button").count() == 0
    await page.goto(f"/jobs/{failed}")
    await expect(page.locator("#job-status")).to_have_text("failed")
    assert await page.locator("#retry").count() == 0
    status = await page.evaluate(
        "async (id) => (await fetch(`/jobs/${id}/retry`, {method: 'POST', body: new URLSearchParams({csrf: 'x'})}))"
        ".status", str(failed),
    )  # fmt: skip
    assert status == 403
    assert await owner.fetchval("select count(*) from media_jobs where job_key = 'browser-read'") == 1
