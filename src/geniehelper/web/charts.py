"""The overview's chart: jobs finished per minute, completed and failed stacked, as inline SVG data
(the template draws it: no script, no library)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from geniehelper.ops.overview import Minute

WIDTH, HEIGHT, BAR_GAP = 600, 120, 1


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    completed_y: float
    completed_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    completed: int
    failed: int
    first: str
    last: str


def throughput_chart(series: list[Minute]) -> Chart:
    peak = max((m.completed + m.failed for m in series), default=0)
    scale = HEIGHT / peak if peak else 0.0
    step = WIDTH / max(len(series), 1)
    bars = []
    for i, m in enumerate(series):
        completed_h, failed_h = m.completed * scale, m.failed * scale
        label = datetime.fromtimestamp(m.at, UTC).strftime("%H:%M")
        bars.append(Bar(
            x=round(i * step, 2), width=round(max(step - BAR_GAP, 1), 2),
            completed_y=round(HEIGHT - completed_h, 2), completed_h=round(completed_h, 2),
            failed_y=round(HEIGHT - completed_h - failed_h, 2), failed_h=round(failed_h, 2),
            title=f"{label}Z: {m.completed} completed, {m.failed} failed",
        ))  # fmt: skip
    stamp = [datetime.fromtimestamp(m.at, UTC).strftime("%H:%MZ") for m in (series[:1] + series[-1:])] or ["-", "-"]
    return Chart(WIDTH, HEIGHT, bars, peak, sum(m.completed for m in series), sum(m.failed for m in series),
                 stamp[0], stamp[-1])  # fmt: skip
