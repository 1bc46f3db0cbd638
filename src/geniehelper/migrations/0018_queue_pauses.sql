-- Queue pause/resume (`geniehelper queues pause|resume NAME`, the dashboard's queue page).
--
-- A row here means the queue is paused: its workers start no new job (the ones running finish) and
-- job_monitor raises no queue-age alert for it. Pausing and resuming are ops actions (the system
-- role, recorded in ops_actions); workers, which may not read this table, ask
-- runtime_paused_queues() about once a second.

create table queue_pauses (
    queue      text primary key check (queue ~ '^[a-z][a-z0-9_]{0,39}$'),
    paused_by  text not null check (length(paused_by) between 1 and 200),
    reason     text check (length(reason) <= 500),
    paused_at  timestamptz not null default now()
);
comment on table queue_pauses is
    'Paused queues (platform operations, not creator data): workers of a paused queue start no new job.';
alter table queue_pauses enable row level security;
alter table queue_pauses force row level security;
create policy system_scan on queue_pauses to geniehelper_system using (true) with check (true);
-- The owner runs runtime_paused_queues() (SECURITY DEFINER) and is subject to forced RLS too.
do $$
begin
    execute format('create policy owner_functions on queue_pauses to %I using (true) with check (true)',
                   current_user);
end
$$;
grant select, insert, delete on queue_pauses to geniehelper_system;

create function runtime_paused_queues(p_queues text[]) returns text[]
language sql stable security definer set search_path = pg_catalog, public as $$
select coalesce(array_agg(queue order by queue), '{}') from queue_pauses where queue = any(p_queues)
$$;
revoke all on function runtime_paused_queues(text[]) from public;
grant execute on function runtime_paused_queues(text[]) to geniehelper_runtime;
