"""Schedulers, one module each, all on `schedulers.base` (those that turn due rows into jobs on
`schedulers.due_work`); `schedulers.host` runs several in one process.

Run: `geniehelper scheduler all` (every one in one process, the Procfile's `scheduler`), or
`geniehelper scheduler NAME [NAME ...]`. Each is leader-elected on its own, so any mix of copies is safe.
"""

from __future__ import annotations

from schedulers.base import Scheduler
from schedulers.dispatcher import Dispatcher
from schedulers.fan_scorer import FanScorer
from schedulers.job_monitor import JobMonitor
from schedulers.job_retention import JobRetention
from schedulers.outbox_relay import OutboxRelay
from schedulers.post_scheduler import PostScheduler
from schedulers.scrape_scheduler import ScrapeScheduler
from schedulers.segment_evaluator import SegmentEvaluator

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        Dispatcher, FanScorer, JobMonitor, JobRetention, OutboxRelay, PostScheduler, ScrapeScheduler,
        SegmentEvaluator,
    )
}
