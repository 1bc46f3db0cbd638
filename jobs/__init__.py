"""Job implementations: one module per job, each a small async function over a typed payload.

IMPLEMENTATIONS maps each contract name (see geniehelper.contracts) to its function.
"""

from __future__ import annotations

from geniehelper.runtime.context import Job
from jobs.publish_post import PUBLISH_POST_JOB

IMPLEMENTATIONS: dict[str, Job] = {
    "publish_post": PUBLISH_POST_JOB,
}
