"""Job implementations: one module per job, each a small async function over a typed payload.

IMPLEMENTATIONS maps each contract name (see geniehelper.contracts) to its function.
"""

from __future__ import annotations

from geniehelper.runtime import JobImpl
from jobs.publish_post import publish_post

IMPLEMENTATIONS: dict[str, JobImpl] = {
    "publish_post": publish_post,
}
