"""Every job contract the platform knows (name, payload model, queue, retry policy, quota).

Services and schedulers enqueue by these contracts without importing job code; `workers/` binds
each to its implementation in `jobs/`.
"""

from __future__ import annotations

from uuid import UUID

from pydantic import Field

from geniehelper.runtime.definition import JobPayload, JobSpec


class PublishPostPayload(JobPayload):
    scheduled_post_id: UUID
    revision: int = Field(ge=1)


PUBLISH_POST = JobSpec(
    "publish_post",
    PublishPostPayload,
    queue="default",
    max_attempts=8,
    timeout_s=60.0,
    backoff_base_s=5.0,
    backoff_max_s=600.0,
    # Counted when the post is dispatched; a post refused here is marked failed with the reason.
    quota_operation="posts_published",
)


def publish_post_key(scheduled_post_id: UUID, revision: int) -> str:
    """One job per scheduled post and revision: re-dispatching the same revision creates nothing."""
    return f"publish_post:{scheduled_post_id}:r{revision}"


ALL_CONTRACTS: list[JobSpec] = [PUBLISH_POST]
