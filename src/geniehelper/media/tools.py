"""The media worker's tools: its store, its ffmpeg, its work directories, and running ffmpeg safely.

ffmpeg is MEDIA_FFMPEG when set, else the system's `ffmpeg` on PATH, else the binary shipped in
the `imageio-ffmpeg` wheel (so installing the project is all the set-up). Only `ffmpeg` is needed:
probing reads its own description of the input (no ffprobe).

Each ffmpeg runs in a session of its own and is SIGKILLed (the whole group) when its timeout
passes or the job is cancelled (job timeout, shutdown, lost lease); on Linux it is also told to die
with the worker (PR_SET_PDEATHSIG), so a worker killed with -9 leaves no ffmpeg behind.

Work directories are MEDIA_TMP_DIR/job-<record id>/a<attempt>: removed when the attempt ends
(success, failure or cancel), and a later attempt of the same job removes what an earlier one
left (a worker killed mid-job cannot clean up itself).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import structlog

from geniehelper.media import memory
from geniehelper.media.store import LocalMediaStore, MediaStore
from geniehelper.runtime.resources import ResourceKey
from geniehelper.settings import Settings

log = structlog.get_logger("geniehelper.media")

T = TypeVar("T")
STDERR_TAIL_LINES = 40


class ToolFailed(RuntimeError):
    """A tool exited non-zero: its input or its arguments are wrong (retrying will not help)."""

    def __init__(self, tool: str, returncode: int, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        last = stderr_tail.strip().splitlines()[-3:] if stderr_tail.strip() else ["(no output)"]
        super().__init__(f"{tool} exited with {returncode}: {' | '.join(last)}"[:1000])


class ToolTimeout(TimeoutError):
    pass


def find_ffmpeg(configured: str | None) -> str:
    """The ffmpeg to run: MEDIA_FFMPEG, else `ffmpeg` on PATH, else imageio-ffmpeg's binary."""
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise FileNotFoundError(f"MEDIA_FFMPEG={configured!r} is not an executable")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel has no binary for this platform
        raise FileNotFoundError(f"no ffmpeg on PATH and none from imageio-ffmpeg: {exc}") from exc
    return exe


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


_PRCTL: Any = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl


async def run_tool(
    argv: Sequence[str],
    *,
    timeout_s: float,
    on_stdout_line: Callable[[str], Awaitable[None] | None] | None = None,
    stderr_lines: int = STDERR_TAIL_LINES,
    check: bool = True,
) -> tuple[int, str]:
    """Run a tool to completion: (exit code, the last `stderr_lines` of its stderr). ToolFailed on a
    non-zero exit when `check`; ToolTimeout after `timeout_s`. On timeout or cancel the process
    group is SIGKILLed and reaped before this returns. The tool is reaped with wait4, and its peak
    RSS goes to the job measuring its memory (`memory.tool_exited`)."""
    tool = Path(argv[0]).name
    proc = subprocess.Popen(  # noqa: ASYNC220 (fork+exec returns at once) reaped here with wait4 (not by asyncio's child watcher): its rusage is wanted
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=_die_with_parent if _PRCTL is not None else None,
    )  # fmt: skip
    tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
    loop = asyncio.get_running_loop()

    async def reader_of(pipe: Any) -> asyncio.StreamReader:
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        return reader

    async def read_stderr(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            tail.append(raw.decode(errors="replace").rstrip())

    async def read_stdout(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            if on_stdout_line is not None:
                maybe = on_stdout_line(raw.decode(errors="replace").strip())
                if maybe is not None:
                    await maybe

    readers: asyncio.Future[Any] | None = None
    try:
        async with asyncio.timeout(timeout_s):
            stderr, stdout = await reader_of(proc.stderr), await reader_of(proc.stdout)
            readers = asyncio.gather(read_stderr(stderr), read_stdout(stdout))
            await readers
            returncode = await _wait4(proc)
    except BaseException as exc:
        _kill_group(proc)
        await asyncio.shield(_reap(proc, readers))
        if isinstance(exc, TimeoutError):
            log.warning("media.tool_killed", tool=tool, reason="timeout", timeout_s=timeout_s)
            raise ToolTimeout(f"{tool} did not finish within {timeout_s:g}s (killed)") from None
        log.warning("media.tool_killed", tool=tool, reason=type(exc).__name__)
        raise
    text = "\n".join(tail)
    if check and returncode != 0:
        raise ToolFailed(tool, returncode, text)
    return returncode, text


async def _wait4(proc: subprocess.Popen[bytes]) -> int:
    """Reap the tool and report its peak RSS (Linux: ru_maxrss in KiB) to the job measuring. Waits on
    a pidfd (no thread held while the tool runs); wait4 itself then returns at once."""
    while proc.returncode is None:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            memory.tool_exited(usage.ru_maxrss)
            break
        await _exited(proc.pid)
    return proc.returncode


async def _exited(pid: int) -> None:
    """Until process `pid` exits (or a short while, where pidfds are not there)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(pidfd, on_exit)
        await ready
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: subprocess.Popen[bytes], readers: Awaitable[Any] | None) -> None:
    with contextlib.suppress(Exception):
        await _wait4(proc)
    if readers is not None:
        with contextlib.suppress(BaseException):
            await readers
    for pipe in (proc.stdout, proc.stderr):
        with contextlib.suppress(Exception):
            if pipe is not None:
                pipe.close()


async def run_blocking(fn: Callable[[], T]) -> T:
    """`fn` in a thread. If the caller is cancelled, the thread is waited for before the
    cancellation goes on, so it never writes into a work directory that is being removed."""
    future = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


@dataclass
class MediaTools:
    """What the media worker opens once (runtime.resources MEDIA) and its jobs share."""

    store: MediaStore
    ffmpeg: str
    tmp_root: Path
    tool_timeout_s: float
    max_image_pixels: int
    ffmpeg_threads: int = 0  # MEDIA_FFMPEG_THREADS: 0 leaves it to ffmpeg (every core)

    @contextlib.asynccontextmanager
    async def work_dir(self, record_id: UUID, attempt: int) -> AsyncIterator[Path]:
        """A fresh directory for one attempt, removed when it ends however it ends. Directories
        earlier attempts of the same job left (their worker was killed) are removed first."""
        job_dir = self.tmp_root / f"job-{record_id}"
        if job_dir.exists():
            for stale in job_dir.iterdir():
                if stale.name != f"a{attempt}":
                    log.info("media.stale_work_dir_removed", path=str(stale))
                await asyncio.to_thread(shutil.rmtree, stale, True)
        path = job_dir / f"a{attempt}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            await asyncio.to_thread(shutil.rmtree, job_dir, True)

    async def ffmpeg_run(
        self, args: Sequence[str], *, duration_s: float | None = None,
        on_progress: Callable[[float], Awaitable[None]] | None = None,
    ) -> str:  # fmt: skip
        """ffmpeg with `args` (quiet, never reading stdin, never asking to overwrite); `on_progress`
        gets the fraction done (0..1) from ffmpeg's own progress reports when `duration_s` is known."""

        async def progress_line(line: str) -> None:
            if on_progress is None or not duration_s or not line.startswith("out_time_us="):
                return
            with contextlib.suppress(ValueError):
                await on_progress(min(1.0, max(0.0, int(line.split("=", 1)[1]) / 1e6 / duration_s)))

        if self.ffmpeg_threads:  # the output's encoder (options just before the output) and the filter graph
            args = ["-filter_threads", str(self.ffmpeg_threads), *args[:-1], "-threads", str(self.ffmpeg_threads),
                    args[-1]]  # fmt: skip
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
                "-progress", "pipe:1", *args]  # fmt: skip
        _, stderr = await run_tool(argv, timeout_s=self.tool_timeout_s, on_stdout_line=progress_line)
        return stderr

    async def count_frames(self, path: Path) -> int:
        """How many frames the first video stream really has (every packet read, nothing decoded)."""
        frames = 0

        def frame_line(line: str) -> None:
            nonlocal frames
            if line.startswith("frame="):
                with contextlib.suppress(ValueError):
                    frames = int(line.split("=", 1)[1])

        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-progress", "pipe:1",
                "-i", str(path), "-map", "0:V:0", "-c", "copy", "-f", "null", "-"]  # fmt: skip
        await run_tool(argv, timeout_s=self.tool_timeout_s, on_stdout_line=frame_line)
        return frames

    async def ffmpeg_describe(self, path: Path) -> str:
        """ffmpeg's own description of an input (what `ffmpeg -i` prints): parsed by `probe`."""
        _, text = await run_tool(
            [self.ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)],
            timeout_s=min(self.tool_timeout_s, 120.0), stderr_lines=5000, check=False,
        )  # fmt: skip
        return text


async def open_media_tools(settings: Settings) -> MediaTools:
    ffmpeg = await asyncio.to_thread(find_ffmpeg, settings.media_ffmpeg)
    settings.media_work_dir.mkdir(parents=True, exist_ok=True)
    tools = MediaTools(
        store=LocalMediaStore(settings.media_root_dir), ffmpeg=ffmpeg, tmp_root=settings.media_work_dir.resolve(),
        tool_timeout_s=settings.media_tool_timeout_s, max_image_pixels=settings.media_max_image_pixels,
        ffmpeg_threads=settings.media_ffmpeg_threads,
    )  # fmt: skip
    log.info("media.tools_ready", ffmpeg=ffmpeg, media_root=str(settings.media_root_dir), tmp_dir=str(tools.tmp_root))
    return tools


async def _close_media_tools(_tools: MediaTools) -> None:
    return None


# The media worker's tools, opened once per worker for the jobs that declare it.
MEDIA: ResourceKey[MediaTools] = ResourceKey("media", open_media_tools, _close_media_tools)
