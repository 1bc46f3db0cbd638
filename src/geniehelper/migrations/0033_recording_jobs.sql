-- 0033 recording jobs: key look-ups by index, many creators' records in one statement, and plans
-- that stay linear under stale statistics.
--
-- 1. record_jobs found a batch's active records with `user_id is not distinct from p_user_id`, which
--    no index serves: every call read every media_jobs row (tests/test_record_plans.py: 2,004 rows
--    read to record one key beside 500 active jobs). Each key is now one probe of the active-key
--    index (`limit 1` per key), the creator's branch on `user_id = p_user_id`, the system's on
--    `user_id is null`. Its plan is the same whatever the statistics say, so it is planned once
--    per connection (force_generic_plan) rather than on every call.
-- 2. runtime_record_jobs: the records of many creators' `enqueue()` calls in one statement (the
--    runtime's group commit, geniehelper.runtime.queue). It runs as the schema owner and is granted
--    to geniehelper_runtime only, whose bookkeeping already spans creators (it starts, finishes and
--    re-drives their attempts); it writes media_jobs rows and nothing else. Jobs that charge a quota
--    and system jobs do not come here (their records need the creator's or the system's transaction).
-- 3. The runtime's batch writes (starts, leases, outcomes, "pushed" marks) join their arrays to
--    media_jobs. With statistics taken while few jobs were processing, the planner estimated one
--    matching row, chose a nested loop and compared every array element with every row: finishing
--    2,500 attempts compared 6,247,500 pairs (1.7 s). Without nested loops the join is a hash join,
--    linear in the batch whatever the statistics (`python -m bench plans` measures both).
-- 4. The lease checks a worker's concurrent jobs make before an outside effect (ensure_lease) share
--    one statement, like its starts and outcomes.

create or replace function record_jobs(
    p_user_id uuid, p_job_name text, p_queue text, p_max_attempts integer, p_keys text[], p_payloads jsonb[],
    p_run_ats timestamptz[], p_subject_types text[], p_subject_ids uuid[], p_concurrency_keys text[]
) returns table (
    id uuid, job_key text, job_name text, status text, enqueued_at timestamptz, run_at timestamptz,
    dispatch_no integer, created boolean
)
language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
begin
    if p_user_id is not null and coalesce(current_setting('app.user_id', true), '') = '' then
        perform set_config('app.user_id', p_user_id::text, true);
    end if;
    if p_user_id is not null then
        return query
        with inserted as (
            insert into media_jobs (user_id, job_name, queue, max_attempts, job_key, payload, run_at, subject_type,
                                    subject_id, concurrency_key)
            select p_user_id, p_job_name, p_queue, p_max_attempts, t.job_key, t.payload, coalesce(t.run_at, now()),
                   t.subject_type, t.subject_id, t.concurrency_key
              from unnest(p_keys, p_payloads, p_run_ats, p_subject_types, p_subject_ids, p_concurrency_keys)
                   as t(job_key, payload, run_at, subject_type, subject_id, concurrency_key)
            on conflict (user_id, job_key) where status in ('queued', 'processing') do nothing
            returning media_jobs.id, media_jobs.job_key, media_jobs.job_name, media_jobs.status,
                      media_jobs.enqueued_at, media_jobs.run_at, media_jobs.dispatch_no
        )
        select i.id, i.job_key, i.job_name, i.status, i.enqueued_at, i.run_at, i.dispatch_no, true from inserted i
        union all
        select m.id, m.job_key, m.job_name, m.status, m.enqueued_at, m.run_at, m.dispatch_no, false
          from (select distinct k.job_key from unnest(p_keys) as k(job_key)) k
         cross join lateral (
               select a.id, a.job_key, a.job_name, a.status, a.enqueued_at, a.run_at, a.dispatch_no
                 from media_jobs a
                where a.user_id = p_user_id and a.job_key = k.job_key and a.status in ('queued', 'processing')
                limit 1) m
         where k.job_key not in (select i.job_key from inserted i);
    else
        return query
        with inserted as (
            insert into media_jobs (user_id, job_name, queue, max_attempts, job_key, payload, run_at, subject_type,
                                    subject_id, concurrency_key)
            select null, p_job_name, p_queue, p_max_attempts, t.job_key, t.payload, coalesce(t.run_at, now()),
                   t.subject_type, t.subject_id, t.concurrency_key
              from unnest(p_keys, p_payloads, p_run_ats, p_subject_types, p_subject_ids, p_concurrency_keys)
                   as t(job_key, payload, run_at, subject_type, subject_id, concurrency_key)
            on conflict (user_id, job_key) where status in ('queued', 'processing') do nothing
            returning media_jobs.id, media_jobs.job_key, media_jobs.job_name, media_jobs.status,
                      media_jobs.enqueued_at, media_jobs.run_at, media_jobs.dispatch_no
        )
        select i.id, i.job_key, i.job_name, i.status, i.enqueued_at, i.run_at, i.dispatch_no, true from inserted i
        union all
        select m.id, m.job_key, m.job_name, m.status, m.enqueued_at, m.run_at, m.dispatch_no, false
          from (select distinct k.job_key from unnest(p_keys) as k(job_key)) k
         cross join lateral (
               select a.id, a.job_key, a.job_name, a.status, a.enqueued_at, a.run_at, a.dispatch_no
                 from media_jobs a
                where a.user_id is null and a.job_key = k.job_key and a.status in ('queued', 'processing')
                limit 1) m
         where k.job_key not in (select i.job_key from inserted i);
    end if;
end;
$$;

create function runtime_record_jobs(
    p_user_ids uuid[], p_job_names text[], p_queues text[], p_max_attempts integer[], p_keys text[],
    p_payloads jsonb[], p_run_ats timestamptz[], p_subject_types text[], p_subject_ids uuid[],
    p_concurrency_keys text[]
) returns table (
    id uuid, user_id uuid, job_key text, job_name text, status text, enqueued_at timestamptz, run_at timestamptz,
    dispatch_no integer, created boolean
)
language plpgsql security definer set search_path = pg_catalog, public set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    if array_position(p_user_ids, null) is not null then
        raise exception 'runtime_record_jobs records creator jobs only: a system job has no creator'
            using errcode = '22004';
    end if;
    return query
    with inserted as (
        insert into media_jobs (user_id, job_name, queue, max_attempts, job_key, payload, run_at, subject_type,
                                subject_id, concurrency_key)
        select t.user_id, t.job_name, t.queue, t.max_attempts, t.job_key, t.payload, coalesce(t.run_at, now()),
               t.subject_type, t.subject_id, t.concurrency_key
          from unnest(p_user_ids, p_job_names, p_queues, p_max_attempts, p_keys, p_payloads, p_run_ats,
                      p_subject_types, p_subject_ids, p_concurrency_keys)
               as t(user_id, job_name, queue, max_attempts, job_key, payload, run_at, subject_type, subject_id,
                    concurrency_key)
        on conflict (user_id, job_key) where status in ('queued', 'processing') do nothing
        returning media_jobs.id, media_jobs.user_id, media_jobs.job_key, media_jobs.job_name, media_jobs.status,
                  media_jobs.enqueued_at, media_jobs.run_at, media_jobs.dispatch_no
    )
    select i.id, i.user_id, i.job_key, i.job_name, i.status, i.enqueued_at, i.run_at, i.dispatch_no, true
      from inserted i
    union all
    select m.id, m.user_id, m.job_key, m.job_name, m.status, m.enqueued_at, m.run_at, m.dispatch_no, false
      from (select distinct k.user_id, k.job_key from unnest(p_user_ids, p_keys) as k(user_id, job_key)) k
     cross join lateral (
           select a.id, a.user_id, a.job_key, a.job_name, a.status, a.enqueued_at, a.run_at, a.dispatch_no
             from media_jobs a
            where a.user_id = k.user_id and a.job_key = k.job_key and a.status in ('queued', 'processing')
            limit 1) m
     where not exists (select 1 from inserted i where i.user_id = k.user_id and i.job_key = k.job_key);
end;
$$;
revoke all on function runtime_record_jobs(uuid[], text[], text[], integer[], text[], jsonb[], timestamptz[],
                                           text[], uuid[], text[]) from public;
grant execute on function runtime_record_jobs(uuid[], text[], text[], integer[], text[], jsonb[], timestamptz[],
                                              text[], uuid[], text[]) to geniehelper_runtime;

-- 3: every batch write joins its arrays to media_jobs without a nested loop.
alter function runtime_start_attempts(uuid[], uuid[], integer[], text, float8, text[], integer[])
    set enable_nestloop = off;
alter function runtime_heartbeats(uuid[], uuid[], integer[], float8) set enable_nestloop = off;
alter function runtime_finish_attempts(uuid[], uuid[], integer[], text[], jsonb[], text[], text[], float8[])
    set enable_nestloop = off;
alter function runtime_mark_enqueued(uuid[], integer[]) set enable_nestloop = off;
alter function runtime_mark_dispatch_failed(uuid[], integer[], text[]) set enable_nestloop = off;

-- 4: runtime_attempt_holds for many attempts at once.
create function runtime_attempts_hold(p_ids uuid[], p_user_ids uuid[], p_attempts integer[]) returns setof uuid
language sql stable security definer set search_path = pg_catalog, public set enable_nestloop = off as $$
select j.id from media_jobs j join unnest(p_ids, p_user_ids, p_attempts) as t(id, user_id, attempt)
    on j.id = t.id and j.user_id is not distinct from t.user_id and j.attempts = t.attempt
 where j.id = any(p_ids) and j.status = 'processing'
$$;
revoke all on function runtime_attempts_hold(uuid[], uuid[], integer[]) from public;
grant execute on function runtime_attempts_hold(uuid[], uuid[], integer[]) to geniehelper_runtime;
drop function runtime_attempt_holds(uuid, uuid, integer);
