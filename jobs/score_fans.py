"""score_fans: score every fan of one creator (docs/scoring.md) and keep their profiles' figures current.

One set-based statement in the creator's transaction (`geniehelper.segments.scoring`), or for a
creator with more than SCORE_PART_FANS fans the same statement per range of fan ids, each in its own
transaction, two at once (`geniehelper.segments.scoring_parts`): every fan's
churn risk, predicted LTV, upsell readiness and loyalty upserted into fan_scores with the model
version and a per-fan explanation (rows whose values did not change are not rewritten), and the
profiles whose engagement score, lifetime spend, last purchase, message count or last message differ
from their ledgers. The result records how many fans were scored and rows written, how many profiles
changed, the model version and duration_ms."""

from __future__ import annotations

from typing import Any

import structlog

from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy
from geniehelper.segments import scoring_parts

log = structlog.get_logger("jobs.score_fans")


class ScoreFansPayload(JobPayload):
    """Nothing but the creator, who is the job's own."""


async def score_fans(ctx: JobContext, payload: ScoreFansPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    run = await scoring_parts.score_in_parts(ctx.creator_tx, ctx.user_id)
    log.info("fans.scored", **run.as_dict())
    return run.as_dict()


SCORE_FANS = JobDefinition(
    "score_fans",
    ScoreFansPayload,
    score_fans,
    queue="bulk",
    policy=Policy(max_attempts=3, timeout_s=900.0, backoff_base_s=10.0),
    key=lambda p: "score_fans",  # one active scoring per creator
)
