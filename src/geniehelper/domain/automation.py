"""Automation: rule runs and per-fan actions (append-only audit trail) and the HITL approval gate.

`hitl_action_queue` holds actions that have NOT run: an item moves from pending to approved,
rejected or expired exactly once. What ran is recorded in `automation_rule_actions`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

RunOutcome = Literal["completed", "partial", "failed", "skipped", "awaiting_approval"]
ActionOutcome = Literal["succeeded", "failed", "skipped"]
HitlStatus = Literal["pending", "approved", "rejected", "expired"]
HitlRequester = Literal["agent", "automation", "system"]


class RuleRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    automation_rule_id: UUID
    trigger_event: str
    triggered_at: datetime
    matched_fan_count: int
    outcome: RunOutcome
    error_message: str | None
    job_id: UUID | None
    evaluated_at: datetime


class RuleAction(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    automation_rule_run_id: UUID
    action_index: int
    action_type: str
    fan_profile_id: UUID
    fan_platform_account_id: UUID | None
    hitl_action_id: UUID | None
    outcome: ActionOutcome
    params: Any
    result: Any
    error_message: str | None
    executed_at: datetime


class HitlItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    action_type: str
    summary: str
    payload: Any
    status: HitlStatus
    requested_by: HitlRequester
    automation_rule_id: UUID | None
    automation_rule_run_id: UUID | None
    fan_profile_id: UUID | None
    expires_at: datetime
    decided_at: datetime | None
    decision_note: str | None
    created_at: datetime


RUN_COLUMNS = """id, user_id, automation_rule_id, trigger_event, triggered_at, matched_fan_count, outcome,
       error_message, job_id, evaluated_at"""
ACTION_COLUMNS = """id, user_id, automation_rule_run_id, action_index, action_type, fan_profile_id,
       fan_platform_account_id, hitl_action_id, outcome, params, result, error_message, executed_at"""
HITL_COLUMNS = """id, user_id, action_type, summary, payload, status, requested_by, automation_rule_id,
       automation_rule_run_id, fan_profile_id, expires_at, decided_at, decision_note, created_at"""

# The run has no natural key: a caller that may retry passes its own deterministic id.
APPEND_RULE_RUN = (
    """
insert into automation_rule_runs (id, user_id, automation_rule_id, trigger_event, triggered_at, matched_fan_count,
                                  outcome, trigger_payload, error_message, job_id)
values (coalesce($1, gen_random_uuid()), $2, $3, $4, $5, $6, $7, $8, $9, $10)
on conflict (id) do nothing
returning """
    + RUN_COLUMNS
)

APPEND_RULE_ACTION = (
    """
insert into automation_rule_actions (user_id, automation_rule_run_id, action_index, action_type, fan_profile_id,
                                     outcome, fan_platform_account_id, hitl_action_id, params, result,
                                     error_message, executed_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, now()))
on conflict (user_id, automation_rule_run_id, fan_profile_id, action_index) do nothing
returning """
    + ACTION_COLUMNS
)

ENQUEUE_HITL = (
    """
insert into hitl_action_queue (user_id, action_type, summary, payload, expires_at, requested_by, automation_rule_id,
                               automation_rule_run_id, fan_profile_id)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
returning """
    + HITL_COLUMNS
)

GET_HITL = "select " + HITL_COLUMNS + " from hitl_action_queue where user_id = $1 and id = $2"

# Only a pending item that has not expired can be decided, and only once.
DECIDE_HITL = (
    """
update hitl_action_queue
   set status = case when $3::boolean then 'approved' else 'rejected' end,
       decided_at = now(),
       decision_note = $4
 where user_id = $1 and id = $2 and status = 'pending' and expires_at > now()
returning """
    + HITL_COLUMNS
)


async def append_rule_run(
    conn: Any,
    user_id: UUID,
    automation_rule_id: UUID,
    trigger_event: str,
    triggered_at: datetime,
    outcome: RunOutcome,
    *,
    matched_fan_count: int = 0,
    run_id: UUID | None = None,
    trigger_payload: dict[str, Any] | None = None,
    error_message: str | None = None,
    job_id: UUID | None = None,
) -> RuleRun | None:
    """Append a finished evaluation; `None` when a run with this `run_id` is already recorded."""
    row = await conn.fetchrow(
        APPEND_RULE_RUN, run_id, user_id, automation_rule_id, trigger_event, triggered_at, matched_fan_count,
        outcome, trigger_payload, error_message, job_id,
    )  # fmt: skip
    return RuleRun.model_validate(dict(row)) if row else None


async def append_rule_action(
    conn: Any,
    user_id: UUID,
    automation_rule_run_id: UUID,
    action_index: int,
    action_type: str,
    fan_profile_id: UUID,
    outcome: ActionOutcome,
    *,
    fan_platform_account_id: UUID | None = None,
    hitl_action_id: UUID | None = None,
    params: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    error_message: str | None = None,
    executed_at: datetime | None = None,
) -> RuleAction | None:
    """Append what one action did for one fan; `None` when (run, fan, action index) is already recorded."""
    row = await conn.fetchrow(
        APPEND_RULE_ACTION, user_id, automation_rule_run_id, action_index, action_type, fan_profile_id, outcome,
        fan_platform_account_id, hitl_action_id, params, result, error_message, executed_at,
    )  # fmt: skip
    return RuleAction.model_validate(dict(row)) if row else None


async def enqueue_hitl_item(
    conn: Any,
    user_id: UUID,
    action_type: str,
    summary: str,
    payload: dict[str, Any],
    expires_at: datetime,
    *,
    requested_by: HitlRequester = "agent",
    automation_rule_id: UUID | None = None,
    automation_rule_run_id: UUID | None = None,
    fan_profile_id: UUID | None = None,
) -> HitlItem:
    row = await conn.fetchrow(
        ENQUEUE_HITL, user_id, action_type, summary, payload, expires_at, requested_by, automation_rule_id,
        automation_rule_run_id, fan_profile_id,
    )  # fmt: skip
    return HitlItem.model_validate(dict(row))


async def get_hitl_item(conn: Any, user_id: UUID, item_id: UUID) -> HitlItem | None:
    row = await conn.fetchrow(GET_HITL, user_id, item_id)
    return HitlItem.model_validate(dict(row)) if row else None


async def decide_hitl_item(
    conn: Any, user_id: UUID, item_id: UUID, approve: bool, reason: str | None
) -> HitlItem | None:
    """Approve or reject a pending, unexpired item. `None` when it is not pending any more (already
    decided or expired), has expired, or does not exist: the caller must not execute anything then."""
    row = await conn.fetchrow(DECIDE_HITL, user_id, item_id, approve, reason)
    return HitlItem.model_validate(dict(row)) if row else None
