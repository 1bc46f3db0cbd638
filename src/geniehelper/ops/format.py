"""How on-call reads ages, times and long text, the same in the terminal (ops/cli*.py) and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime


def age(seconds: float | None) -> str:
    """`42s`, `5m`, `3h20m`, `2d4h`; `-` for none."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s >= 3_600:
        big, unit, small, sub_unit = (s // 86_400, "d", s % 86_400 // 3_600, "h") if s >= 86_400 else (
            s // 3_600, "h", s % 3_600 // 60, "m")  # fmt: skip
        return f"{big}{unit}{f'{small}{sub_unit}' if small else ''}"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


def cut(text: str | None, width: int) -> str:
    """On one line, at most `width` characters (an ellipsis says more was there)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
