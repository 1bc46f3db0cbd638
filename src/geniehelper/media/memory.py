"""Measuring a media job's peak memory: its tools' peak RSS and the worker's own growth.

A job's tools (ffmpeg) are reaped with wait4 (`tools.run_tool`), whose rusage gives each child's
peak RSS (ru_maxrss, the kernel's own high-water mark, not a sample); the job's tool peak is the
largest of its tools' (they run one after another). Pillow works inside the worker process: while
the job runs, the process's RSS (/proc/self/statm) is sampled every SAMPLE_INTERVAL_S and the
growth is the highest sample minus the RSS when the job began. Growth that other jobs of the same
worker cause meanwhile is counted too, so with jobs side by side it over-states, never hides,
a job's own. A job's peak is the sum of the two (the tool and the Pillow work may overlap).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass

SAMPLE_INTERVAL_S = 0.01
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def process_rss_kb() -> int:
    """This process's resident set now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class MemoryMeter:
    """One job's measurements so far."""

    tool_peak_kb: int = 0
    process_start_kb: int = 0
    process_peak_kb: int = 0

    def tool_exited(self, max_rss_kb: int) -> None:
        self.tool_peak_kb = max(self.tool_peak_kb, max_rss_kb)

    def sample(self) -> None:
        self.process_peak_kb = max(self.process_peak_kb, process_rss_kb())

    @property
    def tool_peak_mb(self) -> float:
        return self.tool_peak_kb / 1024

    @property
    def process_growth_mb(self) -> float:
        return max(0, self.process_peak_kb - self.process_start_kb) / 1024

    @property
    def peak_mb(self) -> float:
        return self.tool_peak_mb + self.process_growth_mb


_CURRENT: ContextVar[MemoryMeter | None] = ContextVar("media_memory_meter", default=None)


def tool_exited(max_rss_kb: int) -> None:
    """Called by run_tool for each reaped tool: counted by the job measuring, if any."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.tool_exited(max_rss_kb)


@contextlib.asynccontextmanager
async def measuring() -> AsyncIterator[MemoryMeter]:
    """Measure what runs inside (in this task and the tasks it starts)."""
    meter = MemoryMeter(process_start_kb=process_rss_kb())
    meter.process_peak_kb = meter.process_start_kb
    token = _CURRENT.set(meter)

    async def sample_forever() -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            meter.sample()

    sampler = asyncio.create_task(sample_forever())
    try:
        yield meter
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        meter.sample()
        _CURRENT.reset(token)
