"""The foundation: settings errors, the embedded stack, and `geniehelper up` supervising processes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from geniehelper.embedded import EmbeddedStack
from geniehelper.migrations import MigrationError, require_server_version
from schedulers import SCHEDULERS
from tests.helpers import BIN, base_env, processes_using, spawn, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_invalid_setting_stops_with_one_line_naming_the_variable() -> None:
    result = subprocess.run(
        [str(BIN / "geniehelper"), "version"],
        env=base_env(POST_SCHEDULER_INTERVAL_S="soon"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "POST_SCHEDULER_INTERVAL_S='soon'" in lines[0]


def test_embedded_stack_is_reused_not_started_twice_and_stops_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = EmbeddedStack(data, durable=False)
    urls = first.start()
    try:
        assert first.is_owner
        pg_pid = first.postgres.running_pid_and_port()
        second = EmbeddedStack(data, durable=False)
        assert second.start() == urls
        assert not second.is_owner
        assert second.postgres.running_pid_and_port() == pg_pid
        second.stop()  # not the owner: leaves the servers running
        assert first.running() == urls
    finally:
        first.stop()
    assert first.running() is None
    assert wait_until(lambda: not processes_using(data), 10)


def test_up_supervises_restarts_the_dead_and_stops_everything(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procfile = tmp_path / "Procfile"
    sleeper = f"{sys.executable} -c 'import time; print(\"ready\", flush=True); time.sleep(600)'"
    procfile.write_text(f"alpha: {sleeper}\nbeta: {sleeper}\n")
    env = base_env(DATA_DIR=str(data))
    up = spawn([str(BIN / "geniehelper"), "up", "--no-demo", "--procfile", str(procfile)], env)
    try:
        up.wait_for(r"starting 2 processes")
        alpha = up.wait_for(r"started alpha \(pid (\d+)\)")[0]
        up.wait_for(r"started beta \(pid (\d+)\)")
        # Both children said "ready" (their lines may run into each other's or a supervisor line).
        assert wait_until(lambda: len(re.findall(r"(?<!servers )ready", up.text())) >= 2, 60), up.text()
        servers = processes_using(data)
        assert any("postgres" in p.name() for p in servers) and any("valkey" in p.name() for p in servers)

        # A second `up` on the same data folder refuses and starts no second PostgreSQL.
        again = subprocess.run(
            [str(BIN / "geniehelper"), "up", "--procfile", str(procfile)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 1 and "already running" in again.stderr
        postmasters = [p for p in processes_using(data) if p.name() == "postgres" and "-D" in p.cmdline()]
        assert len(postmasters) == 1

        # Killing one process: reported by name, restarted, the other untouched.
        psutil.Process(int(alpha.group(1))).kill()
        up.wait_for(r"PROCESS DIED: alpha .* was killed by SIGKILL; restarting")
        up.wait_for(r"started alpha \(pid (\d+)\)", count=2)
        assert len(up.wait_for(r"started beta", count=1)) == 1
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0, up.text()
    assert "stopped" in up.text()
    assert wait_until(lambda: not processes_using(data), 15), [p.cmdline() for p in processes_using(data)]
    # The stopped servers must not leave their children behind either.
    assert not [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(600)" in " ".join(p.info["cmdline"] or [])]


def test_health_reports_missing_role_with_nonzero_exit(
    project_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # It reads Redis only: no DATABASE_URL, and no embedded stack to fall back on.
    env = {k: v for k, v in project_env.items() if k not in ("DATABASE_URL", "MIGRATE_DATABASE_URL")}
    env.update(REDIS_URL=redis_url, DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [str(BIN / "geniehelper"), "health", "--role", "worker", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stdout)["missing_roles"] == ["worker"]


def test_up_runs_the_real_procfile_end_to_end_on_the_embedded_stack(tmp_path: Path) -> None:
    """README command 1: every Procfile process ready, the demo post published and its image processed,
    health green, clean stop."""
    data = tmp_path / "data"
    # scrape_scheduler looks for due connections every 2 s (60 s by default): the demo's comes soon.
    env = base_env(DATA_DIR=str(data), HEALTH_INTERVAL_S="1", SCRAPE_SCHEDULER_INTERVAL_S="2")
    root = Path(__file__).resolve().parent.parent
    roles = [line.split(":", 1)[0] for line in (root / "Procfile").read_text().splitlines() if line.strip()]
    up = spawn([str(BIN / "geniehelper"), "up"], env, cwd=root)
    try:
        for role in roles:
            up.wait_for(rf'"event": "process.ready", "role": "{role}"|"role": "{role}".*"event": "process.ready"')
        up.wait_for(r'"event": "publish.posted"', timeout_s=60)
        # The demo creator's connection is scraped and its fans synced by the bulk worker.
        up.wait_for(r'"event": "scrape.done"', timeout_s=60)
        synced = r'"job_name": "sync_fans".*"event": "job.completed"|"event": "job.completed".*"job_name": "sync_fans"'
        up.wait_for(synced, timeout_s=60)
        # The demo image: described through the local AI server `up` runs, and converted, by media_worker.
        for job in ("media_describe", "media_image_convert"):
            up.wait_for(rf'"job_name": "{job}".*"event": "job.completed"|"event": "job.completed".*"job_name": "{job}"',
                        timeout_s=90)  # fmt: skip
        # `scheduler all` hosts every scheduler: each keeps a health role of its own beside the process's.
        health_roles = [*roles, *SCHEDULERS]
        health = subprocess.run(
            [str(BIN / "geniehelper"), "health", *[arg for role in health_roles for arg in ("--role", role)]],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert health.returncode == 0, health.stdout + health.stderr
        # The HTTP API answers with the development admin token `up` made and named.
        (web,) = up.wait_for(r"web: the dashboard at (http://\S+)/ and the HTTP API at (http://\S+/api) "
                             r"\(admin token in (\S+)\)")  # fmt: skip
        token = Path(web.group(3)).read_text().strip()
        queues = httpx.get(f"{web.group(2)}/queues", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert queues.status_code == 200 and "default" in {q["queue"] for q in queues.json()["queues"]}
        assert httpx.get(f"{web.group(2)}/queues", timeout=10).status_code == 401
        # The dashboard: signed out it sends you to sign in; with the token, the overview shows the queues.
        with httpx.Client(base_url=web.group(1), timeout=10) as browser:
            assert browser.get("/").headers["location"].startswith("/login")
            overview = browser.post("/login", data={"token": token, "next": "/"}, follow_redirects=True)
            assert overview.status_code == 200 and 'data-queue="default"' in overview.text
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(60) == 0, up.text()
    assert wait_until(lambda: not processes_using(data), 15), [p.cmdline() for p in processes_using(data)]


def test_the_plain_arq_entry_point_logs_as_configured(project_env: dict[str, str]) -> None:
    code = "import workers.main, structlog; structlog.get_logger('check').warning('entry.point_logged', n=1)"
    env = {**project_env, "LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["event"], line["role"], line["n"]) == ("entry.point_logged", "worker", 1)


def test_migrate_connects_only_to_the_server_it_is_given(tmp_path: Path, owner_url: str) -> None:
    """MIGRATE_DATABASE_URL alone is enough: that database is migrated and nothing embedded starts."""
    env = {k: v for k, v in base_env(DATA_DIR=str(tmp_path), MIGRATE_DATABASE_URL=owner_url).items()
           if k not in ("REDIS_URL", "WORKER_DATABASE_URL")}  # fmt: skip
    done = subprocess.run([str(BIN / "geniehelper"), "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "geniehelper: migrations: up to date"
    assert list(tmp_path.iterdir()) == []  # no embedded server was started for it


def test_postgresql_older_than_16_is_refused_in_one_line() -> None:
    with pytest.raises(MigrationError) as refused:
        require_server_version(150018, "15.18 (Debian 15.18-0+deb12u1)")
    assert str(refused.value).startswith("PostgreSQL 16 or newer is required (this server is 15.18")
    require_server_version(160002, "16.2")
