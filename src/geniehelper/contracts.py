"""Every job contract the platform knows (name, payload model, queue, retry policy, quota).

Services and schedulers enqueue by these contracts without importing job code; `workers/` binds
each to its implementation in `jobs/`.
"""

from __future__ import annotations

from geniehelper.jobspec import JobSpec

ALL_CONTRACTS: list[JobSpec] = []
