"""`geniehelper up`'s process supervisor: runs every Procfile line, restarts the ones that die.

Why our own and not honcho: honcho stops everything when one process exits; ops want the opposite
(the others keep working, the dead one is reported and restarted with backoff), and children must
not outlive the supervisor even when it is killed with SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcfileEntry:
    name: str
    command: str


def parse_procfile(path: Path) -> list[ProcfileEntry]:
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name: command', got {raw!r}")
        entries.append(ProcfileEntry(match.group(1), match.group(2)))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate process names in {names}")
    return entries


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the supervisor dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(
        self,
        entries: list[ProcfileEntry],
        env: dict[str, str],
        *,
        say: Callable[[str], None],
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 30.0,
        stop_grace_s: float = 20.0,
    ) -> None:
        self.entries = entries
        self.env = env
        self.say = say
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.stop_grace_s = stop_grace_s
        self.running: dict[str, asyncio.subprocess.Process] = {}
        self.deaths: dict[str, int] = {}
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop)
        tasks = [asyncio.create_task(self._keep_running(entry)) for entry in self.entries]
        try:
            await self._stopping.wait()
            self.say(f"stopping {len(self.running)} processes")
            await self._terminate_all()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _keep_running(self, entry: ProcfileEntry) -> None:
        backoff = self.backoff_initial_s
        while not self._stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", f"exec {entry.command}",
                env=self.env, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
            self.running[entry.name] = proc
            started = time.monotonic()
            self.say(f"started {entry.name} (pid {proc.pid}): {entry.command}")
            code = await proc.wait()
            self.running.pop(entry.name, None)
            if self._stopping.is_set():
                return
            self.deaths[entry.name] = self.deaths.get(entry.name, 0) + 1
            if time.monotonic() - started >= self.healthy_after_s:
                backoff = self.backoff_initial_s
            self.say(
                f"PROCESS DIED: {entry.name} (pid {proc.pid}) {_describe_exit(code)}; "
                f"restarting in {backoff:.0f}s (death #{self.deaths[entry.name]}); the others keep running"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    async def _terminate_all(self) -> None:
        for proc in list(self.running.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for name, proc in list(self.running.items()):
            try:
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                self.say(f"{name} (pid {proc.pid}) did not stop within {self.stop_grace_s:.0f}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def child_env(urls: dict[str, str]) -> dict[str, str]:
    """The environment for Procfile processes: ours, the server URLs, and our venv first on PATH."""
    env = dict(os.environ)
    env.update(urls)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env
