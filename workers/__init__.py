"""arq worker settings, one per configured queue: `geniehelper worker QUEUE` and
`arq workers.main.WorkerSettings` run the same thing."""

from __future__ import annotations

from geniehelper.runtime.registry import discover
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings, load_settings


def settings_for_queue(queue: str, settings: Settings | None = None) -> type:
    settings = settings or load_settings()
    return build_worker_settings(queue, discover(settings.job_packages), settings=settings)
