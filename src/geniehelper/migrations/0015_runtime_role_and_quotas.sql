-- 0015 the runtime role, and quotas out of the app's reach
--
-- Workers log in as a role that acts as geniehelper_app (their jobs' work, one creator per
-- transaction) and geniehelper_runtime: the job-record bookkeeping that spans creators (starts,
-- leases, outcomes, "pushed" marks). geniehelper_runtime holds no table privilege at all: it may only
-- call the functions below, which do exactly those writes, fenced as before. So a worker has no
-- cross-creator read anywhere and no write but those; the system role (schedulers) is not theirs.
--
-- Quotas: the limits live in tier_quotas (synced from tier_rate_limits.json by every migrate), the
-- counters are written only by charge_quota(), and a record remembers which operation charged it,
-- so a record made any other way (plain SQL) is charged when it starts.

do $$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'geniehelper_runtime') then
        begin
            create role geniehelper_runtime nologin nobypassrls nosuperuser;
        exception when duplicate_object or unique_violation then
            null;  -- created concurrently by another database's migration
        end;
    elsif exists (select from pg_catalog.pg_roles
                   where rolname = 'geniehelper_runtime' and (rolcanlogin or rolbypassrls or rolsuper)) then
        alter role geniehelper_runtime nologin nobypassrls nosuperuser;
    end if;
end
$$;
grant usage on schema public to geniehelper_runtime;

-- Which quota operation charged the record (NULL: none yet). Only charge_quota() sets it.
alter table media_jobs add column quota_charged text;

-- The functions below are SECURITY DEFINER: they run as this schema's owner, which FORCE ROW LEVEL
-- SECURITY subjects to the policies like any role. These policies let the owner through; they grant
-- nothing new (the owner could disable RLS), and no process logs in as the owner (db.PrivilegedLogin).
do $$
declare
    t text;
begin
    foreach t in array array['media_jobs', 'user_usage_counts', 'creators'] loop
        execute format('create policy owner_functions on %I to %I using (true) with check (true)', t, current_user);
    end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Job-record bookkeeping (geniehelper.runtime.store documents each statement).
-- ---------------------------------------------------------------------------------------------
create function runtime_start_attempts(
    p_ids uuid[], p_user_ids uuid[], p_dispatch_nos integer[], p_worker_id text, p_lease_s float8,
    p_concurrency_keys text[], p_concurrency_limits integer[]
) returns table (id uuid, attempts integer, max_attempts integer, quota_charged text)
language sql security definer set search_path = pg_catalog, public as $$
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
returning j.id, j.attempts, j.max_attempts, j.quota_charged
$$;

create function runtime_start_refused(p_ids uuid[], p_user_ids uuid[])
returns table (id uuid, status text, dispatch_no integer, starts_in_s float8)
language sql stable security definer set search_path = pg_catalog, public as $$
select j.id, j.status, j.dispatch_no, greatest(0, extract(epoch from j.run_at - now()))::float8
  from media_jobs j join unnest(p_ids, p_user_ids) as req(id, user_id)
       on j.id = req.id and j.user_id is not distinct from req.user_id
 where j.id = any(p_ids)
$$;

create function runtime_heartbeats(p_ids uuid[], p_user_ids uuid[], p_attempts integer[], p_lease_s float8)
returns setof uuid
language sql security definer set search_path = pg_catalog, public as $$
update media_jobs j set heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => p_lease_s)
  from unnest(p_ids, p_user_ids, p_attempts) as t(id, user_id, attempt)
 where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id and j.attempts = t.attempt
   and j.status = 'processing'
returning j.id
$$;

create function runtime_attempt_holds(p_id uuid, p_user_id uuid, p_attempt integer) returns boolean
language sql stable security definer set search_path = pg_catalog, public as $$
select exists (select 1 from media_jobs
                where id = p_id and user_id is not distinct from p_user_id and attempts = p_attempt
                  and status = 'processing')
$$;

create function runtime_finish_attempts(
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
       lease_expires_at = null, updated_at = now()
  from unnest(p_ids, p_user_ids, p_attempts, p_statuses, p_results, p_errors, p_error_kinds, p_delays_s)
       as t(id, user_id, attempt, status, result, error, error_kind, delay_s)
 where j.id = any(p_ids) and j.id = t.id and j.user_id is not distinct from t.user_id and j.attempts = t.attempt
   and j.status = 'processing' and t.status in ('completed', 'failed', 'queued')
returning j.id, j.attempts
$$;

create function runtime_mark_enqueued(p_ids uuid[], p_dispatch_nos integer[]) returns void
language sql security definer set search_path = pg_catalog, public as $$
update media_jobs j set enqueued_at = now(), dispatch_error = null
  from unnest(p_ids, p_dispatch_nos) as t(id, dispatch_no)
 where j.id = any(p_ids) and j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null
$$;

create function runtime_mark_dispatch_failed(p_ids uuid[], p_dispatch_nos integer[], p_errors text[]) returns void
language sql security definer set search_path = pg_catalog, public as $$
update media_jobs j set dispatch_error = t.error
  from unnest(p_ids, p_dispatch_nos, p_errors) as t(id, dispatch_no, error)
 where j.id = any(p_ids) and j.id = t.id and j.dispatch_no = t.dispatch_no and j.enqueued_at is null
$$;

-- Functions are executable by PUBLIC unless revoked.
do $$
declare
    f regprocedure;
begin
    for f in select p.oid::regprocedure from pg_proc p
              where p.pronamespace = 'public'::regnamespace and p.proname like 'runtime\_%' loop
        execute format('revoke all on function %s from public', f);
        execute format('grant execute on function %s to geniehelper_runtime', f);
    end loop;
end
$$;
-- The schedulers' dispatcher and relay mark what they pushed too.
grant execute on function runtime_mark_enqueued(uuid[], integer[]) to geniehelper_system;
grant execute on function runtime_mark_dispatch_failed(uuid[], integer[], text[]) to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- Quotas.
-- ---------------------------------------------------------------------------------------------
create table tier_quotas (
    tier            text not null,
    operation       text not null check (operation <> ''),
    monthly_limit   integer not null check (monthly_limit >= -1),
    primary key (tier, operation)
);

comment on table tier_quotas is
    'Uses of an operation a tier allows per calendar month (UTC): -1 unlimited; an operation a tier '
    'does not list is not in it. Platform configuration, not creator data: written by `geniehelper '
    'migrate` from tier_rate_limits.json.';
grant select on tier_quotas to geniehelper_app, geniehelper_system;

-- The app keeps its rights on its own records but this one column: revoke table-wide INSERT and
-- UPDATE and grant them on every other column.
do $$
declare
    cols text;
begin
    select string_agg(quote_ident(attname), ', ' order by attnum) into cols
      from pg_attribute
     where attrelid = 'media_jobs'::regclass and attnum > 0 and not attisdropped and attname <> 'quota_charged';
    execute 'revoke insert, update on media_jobs from geniehelper_app';
    execute format('grant insert (%s), update (%s) on media_jobs to geniehelper_app', cols, cols);
end
$$;

-- Usage counters: the app may read its own, never write them.
revoke insert, update, delete, truncate on user_usage_counts from geniehelper_app;

-- Charge up to cardinality(p_job_ids) uses of p_operation to the creator this transaction acts for,
-- under its tier's limit, in one locked read-modify-write: concurrent callers queue on the counter's
-- row and each sees the previous total. The first `admitted` of the given records (those of this
-- creator not charged for this operation yet, in the order given) are marked charged; the caller
-- removes or fails the rest.
create function charge_quota(p_user_id uuid, p_operation text, p_job_ids uuid[])
returns table (admitted integer, tier text, monthly_limit integer, resets_at timestamptz)
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
    v_period date := date_trunc('month', now() at time zone 'UTC')::date;
    v_wanted integer;
    v_used integer;
begin
    if p_user_id is distinct from app_current_user_id() then
        raise exception 'charge_quota: this transaction acts for %, not for creator %',
            coalesce(app_current_user_id()::text, 'no creator'), p_user_id
            using errcode = '42501';
    end if;
    select c.tier into tier from creators c where c.id = p_user_id;
    if not found then
        raise exception 'charge_quota: creator % not found', p_user_id using errcode = 'P0002';
    end if;
    select q.monthly_limit into monthly_limit from tier_quotas q where q.tier = charge_quota.tier
       and q.operation = p_operation;
    monthly_limit := coalesce(monthly_limit, 0);
    resets_at := (v_period + interval '1 month') at time zone 'UTC';
    select count(*) into v_wanted from media_jobs m
     where m.id = any(p_job_ids) and m.user_id = p_user_id and m.quota_charged is distinct from p_operation;
    if monthly_limit = 0 or v_wanted = 0 then
        admitted := 0;
        return next;
        return;
    end if;
    insert into user_usage_counts as u (user_id, operation, period_start, used)
    values (p_user_id, p_operation, v_period, 0)
    on conflict (user_id, operation, period_start) do nothing;
    select u.used into v_used from user_usage_counts u
     where u.user_id = p_user_id and u.operation = p_operation and u.period_start = v_period
       for update;
    admitted := case when monthly_limit < 0 then v_wanted else least(v_wanted, greatest(0, monthly_limit - v_used)) end;
    update user_usage_counts u set used = u.used + admitted, updated_at = now()
     where u.user_id = p_user_id and u.operation = p_operation and u.period_start = v_period;
    update media_jobs j set quota_charged = p_operation
      from (select t.id from unnest(p_job_ids) with ordinality as t(id, n)
              join media_jobs m on m.id = t.id
             where m.user_id = p_user_id and m.quota_charged is distinct from p_operation
             order by t.n
             limit admitted) c
     where j.id = c.id;
    return next;
end
$$;
revoke all on function charge_quota(uuid, text, uuid[]) from public;
grant execute on function charge_quota(uuid, text, uuid[]) to geniehelper_app;
