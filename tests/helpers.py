"""Small helpers for tests that drive our processes for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
from arq.worker import Worker

from geniehelper.embedded import free_port
from geniehelper.runtime.claiming import create_worker
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS: list[Path] = []  # files tests wrote for people to look at (screenshots): listed at the end of the run


class ProcessOutput:
    """Collects a subprocess's merged output lines in a thread, so tests can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float = 60.0, *, count: int = 1) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            matches = [m for line in list(self.lines) if (m := regex.search(line))]
            if len(matches) >= count:
                return matches
            if self.proc.poll() is not None and len(matches) < count:
                time.sleep(0.2)  # let the reader drain
                matches = [m for line in list(self.lines) if (m := regex.search(line))]
                if len(matches) >= count:
                    return matches
                raise AssertionError(f"process exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern!r} x{count}:\n{self.text()}")


def spawn(args: list[str], env: dict[str, str], cwd: Path | None = None) -> ProcessOutput:
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    return ProcessOutput(proc)


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line or working directory is in `path` (servers on a data folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(path) in (proc.info["cwd"] or "") or any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LOG_FORMAT"] = "json"
    env.update(extra)
    return env


async def drain_queue(settings: Settings, registry: JobRegistry, queue: str = "default") -> None:
    """Run a real arq worker in this process until its queue is empty (deferred retries included)."""
    assert settings.database_url and settings.redis_url
    cls = build_worker_settings(
        queue, registry, role=f"test_{queue}", settings=settings,
        database_url=settings.worker_database_url or settings.database_url, redis_url=settings.redis_url,
    )  # fmt: skip
    worker = create_worker(cls, burst=True, handle_signals=False)
    try:
        await worker.main()
    finally:
        await worker.close()


async def stop_worker(worker: Worker, task: asyncio.Task[None], timeout_s: float = 10.0) -> None:
    """Stop an in-process arq worker once its started jobs have ended (arq may still be finishing a
    job whose record is already completed: cancelling it then makes close() raise)."""
    deadline = time.monotonic() + timeout_s
    while any(not t.done() for t in worker.tasks.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.close()


@contextlib.asynccontextmanager
async def web_process(
    env: dict[str, str], tokens: dict[str, dict[str, str]], **extra: str
) -> AsyncIterator[tuple[str, ProcessOutput]]:
    """A real `geniehelper web` process on a free loopback port with these WEB_TOKENS and test jobs;
    yields its base URL. Stopped with SIGTERM, which it must survive cleanly, and it never logs a token."""
    port = free_port()
    env = dict(
        env, LOG_FORMAT="json", PYTHONPATH=str(ROOT), JOB_PACKAGES=json.dumps(["tests.jobs_for_tests"]),
        WEB_PORT=str(port), WEB_TOKENS=json.dumps(tokens), **extra,
    )  # fmt: skip
    web = spawn([str(BIN / "geniehelper"), "web"], env)
    try:
        await asyncio.to_thread(web.wait_for, r'"event": "web.listening"', 60)
        yield f"http://127.0.0.1:{port}", web
    finally:
        web.proc.send_signal(signal.SIGTERM)
        assert web.proc.wait(30) == 0, web.text()
    assert not [name for name, t in tokens.items() if t["token"] in web.text()]  # secrets never logged
