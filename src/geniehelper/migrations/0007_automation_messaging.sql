-- 0007 automation & messaging
--
-- automation_rules, automation_rule_runs (append-only), message_templates, message_broadcasts,
-- message_broadcast_deliveries, hitl_action_queue, automation_rule_actions (append-only).
-- Audit chain: rule -> run (one per evaluation) -> action (one per fan per action).
-- hitl_action_queue is a PRE-execution gate, not an audit log.

-- ---------------------------------------------------------------------------------------------
-- automation_rules: trigger event + conditions + action chain. Paused or archived, never
-- deleted once it has runs (runs reference it with NO ACTION).
-- ---------------------------------------------------------------------------------------------
create table automation_rules (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    description         text,
    trigger_event       text not null check (trigger_event <> ''),   -- e.g. fan.subscribed
    conditions          jsonb not null default '{}' check (jsonb_typeof(conditions) = 'object'),
    actions             jsonb not null default '[]' check (jsonb_typeof(actions) = 'array'),
    fan_segment_id      uuid,            -- optional audience restriction
    requires_approval   boolean not null default false,   -- route actions through the HITL gate
    cooldown_seconds    integer not null default 0 check (cooldown_seconds >= 0),
    status              text not null default 'active'
                        check (status in ('active', 'paused', 'archived')),
    last_run_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, fan_segment_id)
        references fan_segments (user_id, id) on delete set null (fan_segment_id),
    unique (user_id, name),
    unique (user_id, id)
);

comment on table automation_rules is
    'Automation rules: trigger event, conditions (jsonb), action chain (jsonb array), optional '
    'segment, HITL flag; status active/paused/archived.';

-- event dispatch: a creator's active rules for an event
create index automation_rules_trigger_idx on automation_rules (user_id, trigger_event)
    where status = 'active';

create trigger automation_rules_touch_updated_at
    before update on automation_rules
    for each row execute function touch_updated_at();

alter table automation_rules enable row level security;
alter table automation_rules force row level security;
create policy tenant_isolation on automation_rules
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on automation_rules to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- automation_rule_runs (APPEND-ONLY): one row per rule evaluation, inserted once the
-- evaluation is done (trigger time, matched fan count, outcome). Per-fan results follow in
-- automation_rule_actions.
-- ---------------------------------------------------------------------------------------------
create table automation_rule_runs (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id),
    automation_rule_id  uuid not null,
    trigger_event       text not null,
    triggered_at        timestamptz not null,
    trigger_payload     jsonb,
    matched_fan_count   integer not null default 0 check (matched_fan_count >= 0),
    outcome             text not null
                        check (outcome in ('completed', 'partial', 'failed', 'skipped',
                               'awaiting_approval')),
    error_message       text,
    job_id              uuid,            -- media_jobs id of the evaluating job (no FK: jobs are pruned)
    evaluated_at        timestamptz not null default now(),
    created_at          timestamptz not null default now(),
    foreign key (user_id, automation_rule_id) references automation_rules (user_id, id),
    unique (user_id, id)
);

comment on table automation_rule_runs is
    'APPEND-ONLY. One row per rule evaluation: trigger, trigger time, matched fan count, outcome.';

create index automation_rule_runs_rule_idx
    on automation_rule_runs (user_id, automation_rule_id, triggered_at desc);

create trigger automation_rule_runs_append_only
    before update or delete on automation_rule_runs
    for each row execute function refuse_append_only_change();
create trigger automation_rule_runs_append_only_truncate
    before truncate on automation_rule_runs
    for each statement execute function refuse_append_only_change();

alter table automation_rule_runs enable row level security;
alter table automation_rule_runs force row level security;
create policy tenant_isolation on automation_rule_runs
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on automation_rule_runs
    from geniehelper_app, geniehelper_system, public;
grant select, insert on automation_rule_runs to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- message_templates
-- ---------------------------------------------------------------------------------------------
create table message_templates (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    category            text,
    body                text not null,
    variables           text[] not null default '{}',    -- substitution slots used in body
    tone                jsonb not null default '{}' check (jsonb_typeof(tone) = 'object'),
    platform_variants   jsonb not null default '{}' check (jsonb_typeof(platform_variants) = 'object'),
    status              text not null default 'active' check (status in ('active', 'archived')),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (user_id, name),
    unique (user_id, id)
);

comment on table message_templates is
    'Reusable message templates: body with variable slots, tone controls, per-platform variants '
    '(jsonb keyed by platform).';

create trigger message_templates_touch_updated_at
    before update on message_templates
    for each row execute function touch_updated_at();

alter table message_templates enable row level security;
alter table message_templates force row level security;
create policy tenant_isolation on message_templates
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on message_templates to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- message_broadcasts: a send to a segment. The segment and template are snapshotted at send
-- time (the live rows may change or go away); counters summarize the deliveries.
-- ---------------------------------------------------------------------------------------------
create table message_broadcasts (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text,
    message_template_id uuid,
    body_snapshot       text,            -- rendered template body at send time
    fan_segment_id      uuid,
    segment_snapshot    jsonb,           -- segment rules + membership size at send time
    platform            text,            -- NULL = each fan's platforms
    campaign_id         uuid,
    price               numeric(12, 2) check (price >= 0),   -- PPV broadcast price
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    status              text not null default 'draft'
                        check (status in ('draft', 'scheduled', 'sending', 'sent', 'cancelled',
                               'failed')),
    scheduled_at        timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    recipients_total    integer not null default 0 check (recipients_total >= 0),
    sent_count          integer not null default 0 check (sent_count >= 0),
    delivered_count     integer not null default 0 check (delivered_count >= 0),
    read_count          integer not null default 0 check (read_count >= 0),
    failed_count        integer not null default 0 check (failed_count >= 0),
    conversion_count    integer not null default 0 check (conversion_count >= 0),
    conversion_revenue  numeric(12, 2) not null default 0 check (conversion_revenue >= 0),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (status <> 'scheduled' or scheduled_at is not null),
    foreign key (user_id, message_template_id)
        references message_templates (user_id, id) on delete set null (message_template_id),
    foreign key (user_id, fan_segment_id)
        references fan_segments (user_id, id) on delete set null (fan_segment_id),
    foreign key (user_id, campaign_id)
        references campaigns (user_id, id) on delete set null (campaign_id),
    unique (user_id, id)
);

comment on table message_broadcasts is
    'Broadcast to a fan segment: template ref + body snapshot, segment ref + snapshot, scheduled '
    'time, status, delivery/read/conversion counters.';

-- broadcast dispatcher: due scheduled broadcasts
create index message_broadcasts_due_idx on message_broadcasts (scheduled_at)
    where status = 'scheduled';
create index message_broadcasts_user_idx on message_broadcasts (user_id, created_at desc);

create trigger message_broadcasts_touch_updated_at
    before update on message_broadcasts
    for each row execute function touch_updated_at();

alter table message_broadcasts enable row level security;
alter table message_broadcasts force row level security;
create policy tenant_isolation on message_broadcasts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on message_broadcasts to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- message_broadcast_deliveries: one per fan platform account per broadcast.
-- ---------------------------------------------------------------------------------------------
create table message_broadcast_deliveries (
    id                          uuid primary key default gen_random_uuid(),
    user_id                     uuid not null references creators (id) on delete cascade,
    message_broadcast_id        uuid not null,
    fan_profile_id              uuid not null,
    fan_platform_account_id     uuid not null,
    fan_message_id              uuid,        -- the outbound message record
    status                      text not null default 'pending'
                                check (status in ('pending', 'sent', 'delivered', 'read', 'failed',
                                       'skipped')),
    sent_at                     timestamptz,
    delivered_at                timestamptz,
    read_at                     timestamptz,
    converted_at                timestamptz,
    conversion_event            text,        -- e.g. purchase, tip, reply, subscribe
    conversion_transaction_id   uuid,
    error_message               text,
    created_at                  timestamptz not null default now(),
    updated_at                  timestamptz not null default now(),
    foreign key (user_id, message_broadcast_id)
        references message_broadcasts (user_id, id) on delete cascade,
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, fan_platform_account_id)
        references fan_platform_accounts (user_id, id) on delete cascade,
    foreign key (user_id, fan_message_id)
        references fan_messages (user_id, id) on delete set null (fan_message_id),
    foreign key (user_id, conversion_transaction_id)
        references fan_transactions (user_id, id) on delete set null (conversion_transaction_id),
    unique (user_id, message_broadcast_id, fan_platform_account_id)
);

comment on table message_broadcast_deliveries is
    'Per-fan delivery of a broadcast: status, sent/delivered/read time, conversion event.';

create index message_broadcast_deliveries_status_idx
    on message_broadcast_deliveries (user_id, message_broadcast_id, status);
create index message_broadcast_deliveries_fan_idx
    on message_broadcast_deliveries (user_id, fan_profile_id);

create trigger message_broadcast_deliveries_touch_updated_at
    before update on message_broadcast_deliveries
    for each row execute function touch_updated_at();

alter table message_broadcast_deliveries enable row level security;
alter table message_broadcast_deliveries force row level security;
create policy tenant_isolation on message_broadcast_deliveries
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on message_broadcast_deliveries to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- hitl_action_queue: PRE-execution approval gate. A row is written before the action runs;
-- pending -> approved | rejected | expired (the expiry sweep). An approved item is executed
-- by a job keyed 'hitl:<id>' (media_jobs unique job_key: runs once) and recorded in
-- automation_rule_actions; this row is never the record of execution.
-- ---------------------------------------------------------------------------------------------
create table hitl_action_queue (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    action_type             text not null check (action_type <> ''),
    summary                 text not null,   -- what the creator is asked to approve
    payload                 jsonb not null,  -- everything needed to run the action
    status                  text not null default 'pending'
                            check (status in ('pending', 'approved', 'rejected', 'expired')),
    requested_by            text not null default 'agent'
                            check (requested_by in ('agent', 'automation', 'system')),
    automation_rule_id      uuid,
    automation_rule_run_id  uuid,
    fan_profile_id          uuid,
    expires_at              timestamptz not null,
    decided_at              timestamptz,
    decision_note           text,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    foreign key (user_id, automation_rule_id)
        references automation_rules (user_id, id) on delete set null (automation_rule_id),
    foreign key (user_id, automation_rule_run_id)
        references automation_rule_runs (user_id, id),
    foreign key (user_id, fan_profile_id)
        references fan_profiles (user_id, id) on delete cascade,
    unique (user_id, id)
);

comment on table hitl_action_queue is
    'Human-in-the-loop approval gate: actions awaiting creator approval BEFORE they run '
    '(pending -> approved/rejected/expired). Not an audit log; see automation_rule_actions.';

-- expiry sweep
create index hitl_action_queue_expiry_idx on hitl_action_queue (expires_at) where status = 'pending';
-- the creator's inbox
create index hitl_action_queue_pending_idx on hitl_action_queue (user_id, created_at desc)
    where status = 'pending';

create trigger hitl_action_queue_touch_updated_at
    before update on hitl_action_queue
    for each row execute function touch_updated_at();

alter table hitl_action_queue enable row level security;
alter table hitl_action_queue force row level security;
create policy tenant_isolation on hitl_action_queue
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on hitl_action_queue to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- automation_rule_actions (APPEND-ONLY): one row per fan per action of a run, written when the
-- action has been executed (or definitively skipped/failed). The lowest-level audit trail.
-- ---------------------------------------------------------------------------------------------
create table automation_rule_actions (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id),
    automation_rule_run_id  uuid not null,
    action_index            smallint not null check (action_index >= 0),   -- position in the chain
    action_type             text not null check (action_type <> ''),
    fan_profile_id          uuid not null,
    fan_platform_account_id uuid,
    hitl_action_id          uuid,            -- the approval item, if the action was gated
    outcome                 text not null check (outcome in ('succeeded', 'failed', 'skipped')),
    params                  jsonb,
    result                  jsonb,
    error_message           text,
    executed_at             timestamptz not null default now(),
    created_at              timestamptz not null default now(),
    foreign key (user_id, automation_rule_run_id) references automation_rule_runs (user_id, id),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id),
    foreign key (user_id, fan_platform_account_id) references fan_platform_accounts (user_id, id),
    foreign key (user_id, hitl_action_id) references hitl_action_queue (user_id, id),
    -- one row per fan per action per run: a retried job inserts ON CONFLICT DO NOTHING
    unique (user_id, automation_rule_run_id, fan_profile_id, action_index)
);

comment on table automation_rule_actions is
    'APPEND-ONLY. One row per fan per executed action of a rule run (outcome, params, result).';

create index automation_rule_actions_fan_idx
    on automation_rule_actions (user_id, fan_profile_id, executed_at desc);
create index automation_rule_actions_hitl_idx on automation_rule_actions (user_id, hitl_action_id)
    where hitl_action_id is not null;

create trigger automation_rule_actions_append_only
    before update or delete on automation_rule_actions
    for each row execute function refuse_append_only_change();
create trigger automation_rule_actions_append_only_truncate
    before truncate on automation_rule_actions
    for each statement execute function refuse_append_only_change();

alter table automation_rule_actions enable row level security;
alter table automation_rule_actions force row level security;
create policy tenant_isolation on automation_rule_actions
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on automation_rule_actions
    from geniehelper_app, geniehelper_system, public;
grant select, insert on automation_rule_actions to geniehelper_app;
