-- 0017 job_monitor and on-call: a job's history, alerts, their deliveries, and ops actions
--
-- history: what happened to a job beyond its current state (each failed or retried attempt with its
--   error and worker, each re-drive, each ops action), appended by the statements that do it, so
--   nothing costs an extra round trip. It is pruned with its record (job_retention).
-- ops_alerts: one row per incident (a rule and a key, e.g. "jobs_dead:publish_post"), open until its
--   condition clears; its webhook deliveries are logged in ops_alert_deliveries.
-- ops_actions: who did what to jobs and queues from the CLI (and later the dashboard), append-only.

alter table media_jobs add column history jsonb not null default '[]'
    check (jsonb_typeof(history) = 'array');
comment on column media_jobs.history is
    'Events beyond the current state, oldest first: {"at", "event", "attempt", "worker", "error_kind", "error", "by"}.';
grant update (history) on media_jobs to geniehelper_system;

-- The dead-jobs rule reads the failures of the last day every tick: an index of failures only, so it
-- never walks a day of completions.
create index media_jobs_failed_idx on media_jobs (finished_at) where status = 'failed';

-- An entry for the history (errors are cut to 1,000 characters: the record keeps the last in full).
create function job_history_entry(
    p_event text, p_attempt integer, p_worker text, p_error_kind text, p_error text, p_by text default null
) returns jsonb
language sql stable parallel safe as $$
select jsonb_strip_nulls(jsonb_build_object(
    'at', to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'event', p_event,
    'attempt', p_attempt, 'worker', p_worker, 'error_kind', p_error_kind, 'error', left(p_error, 1000), 'by', p_by
))
$$;
grant execute on function job_history_entry(text, integer, text, text, text, text)
    to geniehelper_app, geniehelper_system;

-- Outcomes: a retry or a failure is appended to the history (a completion is the record itself).
create or replace function runtime_finish_attempts(
    p_ids uuid[], p_user_ids uuid[], p_attempts integer[], p_statuses text[], p_results jsonb[], p_errors text[],
    p_error_kinds text[], p_delays_s float8[]
) returns table (id uuid, attempts integer)
language sql security definer set search_path = pg_catalog, public as $$
update media_jobs j
   set status = t.status,
       result = case when t.status = 'completed' then t.result else j.result end,
       progress = case when t.status = 'completed' then 100 else j.progress end,
       error = t.error, error_kind = t.error_kind,
       run_at = case when t.status = 'queued' then now() + make_interval(secs => t.delay_s) else j.run_at end,
       finished_at = case when t.status = 'queued' then j.finished_at else now() end,
       history = case when t.status = 'completed' then j.history
                      else j.history || job_history_entry(case when t.status = 'queued' then 'retry' else 'failed' end,
                                                          j.attempts, j.worker_id, t.error_kind, t.error) end,
       lease_expires_at = null, updated_at = now()
  from unnest(p_ids, p_user_ids, p_attempts, p_statuses, p_results, p_errors, p_error_kinds, p_delays_s)
       as t(id, user_id, attempt, status, result, error, error_kind, delay_s)
 where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id and j.attempts = t.attempt
   and j.status = 'processing' and t.status in ('completed', 'failed', 'queued')
returning j.id, j.attempts
$$;

-- ---------------------------------------------------------------------------------------------
-- Alerts (platform operations, not creator data: the system role only; no policy for the app).
-- ---------------------------------------------------------------------------------------------
create table ops_alerts (
    id                  uuid primary key default gen_random_uuid(),
    rule                text not null check (rule <> ''),
    dedup_key           text not null check (dedup_key <> ''),
    severity            text not null check (severity in ('warning', 'critical')),
    summary             text not null,
    details             jsonb not null default '{}' check (jsonb_typeof(details) = 'object'),
    status              text not null default 'open' check (status in ('open', 'acknowledged', 'resolved')),
    seen_count          integer not null default 1 check (seen_count >= 1),
    opened_at           timestamptz not null default now(),
    last_seen_at        timestamptz not null default now(),
    acknowledged_at     timestamptz,
    acknowledged_by     text,
    resolved_at         timestamptz,
    resolved_by         text,
    -- The webhook: what is still to be said ('opened', 'resolved'), when to try next, how it went.
    notify              text check (notify in ('opened', 'resolved')),
    notify_after        timestamptz,
    delivery_attempts   integer not null default 0,
    delivered_at        timestamptz,
    delivery_error      text,
    updated_at          timestamptz not null default now(),
    check ((status = 'resolved') = (resolved_at is not null))
);
create unique index ops_alerts_open_key_idx on ops_alerts (dedup_key) where status <> 'resolved';
create index ops_alerts_notify_idx on ops_alerts (notify_after) where notify is not null;
create index ops_alerts_opened_idx on ops_alerts (opened_at desc);
create trigger ops_alerts_touch_updated_at before update on ops_alerts
    for each row execute function touch_updated_at();
comment on table ops_alerts is
    'One row per incident: a rule and key, open (or acknowledged) until its condition clears, then resolved.';

alter table ops_alerts enable row level security;
alter table ops_alerts force row level security;
create policy system_scan on ops_alerts to geniehelper_system using (true) with check (true);
grant select, insert on ops_alerts to geniehelper_system;
grant update (status, summary, details, severity, seen_count, last_seen_at, acknowledged_at, acknowledged_by,
              resolved_at, resolved_by, notify, notify_after, delivery_attempts, delivered_at, delivery_error,
              updated_at)
    on ops_alerts to geniehelper_system;

-- Every webhook POST, whatever came of it (append-only).
create table ops_alert_deliveries (
    id              bigint generated always as identity primary key,
    alert_id        uuid not null references ops_alerts (id) on delete cascade,
    event           text not null check (event in ('opened', 'resolved')),
    attempted_at    timestamptz not null default now(),
    status_code     integer,
    error           text,
    duration_ms     integer not null check (duration_ms >= 0)
);
create index ops_alert_deliveries_alert_idx on ops_alert_deliveries (alert_id, attempted_at);
alter table ops_alert_deliveries enable row level security;
alter table ops_alert_deliveries force row level security;
create policy system_scan on ops_alert_deliveries to geniehelper_system using (true) with check (true);
grant select, insert on ops_alert_deliveries to geniehelper_system;
create trigger ops_alert_deliveries_append_only before update or delete on ops_alert_deliveries
    for each row execute function refuse_append_only_change();
create trigger ops_alert_deliveries_append_only_truncate before truncate on ops_alert_deliveries
    for each statement execute function refuse_append_only_change();

-- Who did what from the ops tools (append-only).
create table ops_actions (
    id              bigint generated always as identity primary key,
    at              timestamptz not null default now(),
    actor           text not null check (actor <> ''),
    action          text not null check (action <> ''),
    target          jsonb not null default '{}' check (jsonb_typeof(target) = 'object'),
    affected        integer not null default 0 check (affected >= 0)
);
create index ops_actions_at_idx on ops_actions (at desc);
alter table ops_actions enable row level security;
alter table ops_actions force row level security;
create policy system_scan on ops_actions to geniehelper_system using (true) with check (true);
grant select, insert on ops_actions to geniehelper_system;
create trigger ops_actions_append_only before update or delete on ops_actions
    for each row execute function refuse_append_only_change();
create trigger ops_actions_append_only_truncate before truncate on ops_actions
    for each statement execute function refuse_append_only_change();
