"""Scheduler processes, one module each, all on `schedulers.base`. Run: `geniehelper scheduler NAME`."""

from __future__ import annotations

from schedulers.base import Scheduler
from schedulers.outbox_relay import OutboxRelay
from schedulers.post_scheduler import PostScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {cls.name: cls for cls in (OutboxRelay, PostScheduler)}
