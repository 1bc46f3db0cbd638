"""evaluate_segment: refresh one segment's membership by difference, as its creator.

In one creator transaction the segment's row is locked, its rules compiled (segments it refers to
inlined) and one statement inserts the fans who joined, deletes those who left and writes
`member_count`, `last_evaluated_at` and the rules version evaluated. The result records joined,
left, member_count and duration_ms. Stored rules that cannot be evaluated (written around the
validation, or referring to a segment since deleted) fail the job permanently, and the reason is
kept on the segment (`evaluation_error`); its membership is left as it was.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog

from geniehelper.runtime.context import JobContext
from geniehelper.runtime.definition import JobDefinition, JobPayload, Policy, Subject
from geniehelper.runtime.retry import PermanentJobError
from geniehelper.segments import evaluation
from geniehelper.segments.rules import RuleErrors

log = structlog.get_logger("jobs.evaluate_segment")


class EvaluateSegmentPayload(JobPayload):
    segment_id: UUID


async def evaluate_segment(ctx: JobContext, payload: EvaluateSegmentPayload) -> dict[str, Any]:
    assert ctx.user_id is not None
    refused: RuleErrors | None = None
    async with ctx.creator_tx() as conn:
        try:
            done = await evaluation.refresh(conn, ctx.user_id, payload.segment_id)
        except RuleErrors as exc:
            refused, done = exc, None
    if refused is not None:
        async with ctx.creator_tx() as conn:
            await evaluation.record_refusal(conn, ctx.user_id, payload.segment_id, refused)
        log.warning("segment.rules_refused", segment_id=str(payload.segment_id), errors=refused.as_list())
        raise PermanentJobError(str(refused))
    if done is None:
        return {"outcome": "missing", "segment_id": str(payload.segment_id)}
    log.info("segment.evaluated", **done.as_dict())
    return {"outcome": "evaluated", **done.as_dict()}


EVALUATE_SEGMENT = JobDefinition(
    "evaluate_segment",
    EvaluateSegmentPayload,
    evaluate_segment,
    queue="bulk",
    policy=Policy(max_attempts=4, timeout_s=300.0, backoff_base_s=5.0),
    # One active evaluation per segment: a segment claimed again while its job waits adds nothing.
    key=lambda p: f"evaluate_segment:{p.segment_id}",
    subject=lambda p: Subject("fan_segment", p.segment_id),
)
