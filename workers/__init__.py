"""arq worker settings, one per queue: which jobs run where.

`geniehelper worker default` (Procfile `worker`) and `arq workers.main.WorkerSettings` run the
same thing.
"""

from __future__ import annotations

from geniehelper.contracts import ALL_CONTRACTS
from geniehelper.runtime.worker import build_worker_settings
from geniehelper.settings import Settings
from jobs import IMPLEMENTATIONS

ROLES = {"default": "worker", "media": "media_worker"}


def settings_for_queue(queue: str, settings: Settings | None = None) -> type:
    return build_worker_settings(queue, ALL_CONTRACTS, IMPLEMENTATIONS, role=ROLES[queue], settings=settings)
