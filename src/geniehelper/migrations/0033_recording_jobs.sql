-- 0033 recording jobs: key look-ups by index, many creators' records in one statement, and plans
-- that stay linear under stale statistics.
--
-- 1. record_jobs found a batch's active records with `user_id is not distinct from p_user_id`, which
--    no index serves: every call read every media_jobs row (tests/test_record_plans.py: 2,004 rows
--    read to record one key beside 500 active jobs). Each key is now one probe of the active-key
--    index (`limit 1` per key), the creator's branch on `user_id = p_user_id`, the system's on
--    `user_id is null`. Its plan is the same whatever the statistics say, so it is planned once
--    per connection (force_generic_plan): planning cost more than running a one-row record.
-- 2. runtime_record_jobs: the records of many creators' `enqueue()` calls in one statement (the
--    runtime's group commit, geniehelper.runtime.queue). It runs as the schema owner and is granted
--    to geniehelper_runtime only, whose bookkeeping already spans creators (it starts, finishes and
--    re-drives their attempts); it writes media_jobs rows and nothing else. Jobs that charge a quota
--    and system jobs do not come here (their records need the creator's or the system's transaction).
-- 3. The runtime's batch writes were `language sql` functions. PostgreSQL caches a generic plan for
--    their statements after five calls; with statistics taken while media_jobs was small, that plan
--    joined the unnest to media_jobs by a nested loop over a scan and became quadratic: marking
--    2,500 records enqueued took 1.0 s, 10,000 took 14 s, finishing 10,000 took 35 s. As plpgsql
--    with force_custom_plan each call is planned for its own array sizes: 50 and 254 ms (mark),
--    66 and 257 ms (finish), measured here.

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

-- 3: the same statements as migrations 0015 and 0017, each call planned for its own arrays.
create or replace function runtime_start_attempts(
    p_ids uuid[], p_user_ids uuid[], p_dispatch_nos integer[], p_worker_id text, p_lease_s float8,
    p_concurrency_keys text[], p_concurrency_limits integer[]
) returns table (id uuid, attempts integer, max_attempts integer, quota_charged text)
language plpgsql security definer set search_path = pg_catalog, public set plan_cache_mode = force_custom_plan
as $$
#variable_conflict use_column
begin
    return query
    update media_jobs j
       set status = 'processing', attempts = j.attempts + 1, started_at = now(), heartbeat_at = now(),
           lease_expires_at = now() + make_interval(secs => p_lease_s), worker_id = p_worker_id, updated_at = now()
      from unnest(p_ids, p_user_ids, p_dispatch_nos, p_concurrency_keys, p_concurrency_limits)
           as req(id, user_id, dispatch_no, concurrency_key, concurrency_limit)
     where j.id = any(p_ids) and j.id = req.id and j.user_id is not distinct from req.user_id
       and j.dispatch_no = req.dispatch_no and j.run_at <= now() + interval '1 second'
       and (j.status = 'queued' or (j.status = 'processing' and j.lease_expires_at < now()))
       and (req.concurrency_key is null
            or (select count(*) from media_jobs c
                 where c.concurrency_key = req.concurrency_key and c.status = 'processing'
                   and c.lease_expires_at > now() and c.id <> req.id) < req.concurrency_limit)
    returning j.id, j.attempts, j.max_attempts, j.quota_charged;
end;
$$;

create or replace function runtime_heartbeats(p_ids uuid[], p_user_ids uuid[], p_attempts integer[], p_lease_s float8)
returns setof uuid
language plpgsql security definer set search_path = pg_catalog, public set plan_cache_mode = force_custom_plan
as $$
begin
    return query
    update media_jobs j set heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => p_lease_s)
      from unnest(p_ids, p_user_ids, p_attempts) as t(id, user_id, attempt)
     where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id
       and j.attempts = t.attempt and j.status = 'processing'
    returning j.id;
end;
$$;

create or replace function runtime_finish_attempts(
    p_ids uuid[], p_user_ids uuid[], p_attempts integer[], p_statuses text[], p_results jsonb[], p_errors text[],
    p_error_kinds text[], p_delays_s float8[]
) returns table (id uuid, attempts integer)
language plpgsql security definer set search_path = pg_catalog, public set plan_cache_mode = force_custom_plan
as $$
#variable_conflict use_column
begin
    return query
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
     where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id
       and j.attempts = t.attempt and j.status = 'processing' and t.status in ('completed', 'failed', 'queued')
    returning j.id, j.attempts;
end;
$$;

create or replace function runtime_mark_enqueued(p_ids uuid[], p_dispatch_nos integer[]) returns void
language plpgsql security definer set search_path = pg_catalog, public set plan_cache_mode = force_custom_plan
as $$
begin
    update media_jobs j set enqueued_at = now(), dispatch_error = null
      from unnest(p_ids, p_dispatch_nos) as t(id, dispatch_no)
     where j.id = any(p_ids) and j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null;
end;
$$;
