-- Job lifecycle: the record decides, Redis only carries "dispatch n of record r".
--
-- dispatch_no: every push to Redis is one dispatch with its own arq id (`<record id>:<dispatch_no>`).
--   Re-driving a job (its worker died, Redis lost it, it was handed back) bumps dispatch_no and
--   clears enqueued_at; a delivery of an older dispatch finds its number stale and does nothing.
-- lease_expires_at: a `processing` record belongs to the attempt that started it until its lease
--   expires; heartbeats extend it, a second start is refused while it is fresh.
-- dispatch_error: why the last push to Redis failed (the relay goes on with the rows behind it).

-- Heartbeats touch only unindexed columns, so with free space on the page they are HOT updates
-- (no index write at all).
alter table media_jobs set (fillfactor = 80);

alter table media_jobs
    add column dispatch_no      integer not null default 1 check (dispatch_no >= 1),
    add column lease_expires_at timestamptz,
    add column dispatch_error   text;

comment on column media_jobs.dispatch_no is
    'Number of the current dispatch: the arq job id is <id>:<dispatch_no>; older dispatches are stale.';
comment on column media_jobs.lease_expires_at is
    'While processing: the attempt owns the record until then (heartbeats extend it).';

-- Unique while active: a key collapses duplicates among queued/processing records; once the job
-- finished, the same key may run again (a re-dispatch, a requeue).
alter table media_jobs drop constraint media_jobs_user_id_job_key_key;
create unique index media_jobs_active_key_idx on media_jobs (user_id, job_key)
    where status in ('queued', 'processing');
create index media_jobs_key_idx on media_jobs (user_id, job_key);

-- The stall lookup must not index heartbeat_at or lease_expires_at (that would make every heartbeat
-- a non-HOT update): it scans the processing records, a set bounded by the workers' concurrency.
drop index media_jobs_stall_idx;
create index media_jobs_processing_idx on media_jobs (started_at) where status = 'processing';

-- Retention: finished records, oldest first.
create index media_jobs_finished_idx on media_jobs (finished_at)
    where status in ('completed', 'failed', 'cancelled');

-- Opening a job's transaction: act for its creator and say whether the attempt still owns the
-- record, in one round trip (plpgsql runs the two statements in order: the RLS check sees the
-- creator just set).
create function begin_job_tx(p_user_id uuid, p_job_id uuid, p_attempt integer) returns boolean
language plpgsql as $$
begin
    perform set_config('app.user_id', p_user_id::text, true);
    return exists (select 1 from media_jobs
                    where id = p_job_id and attempts = p_attempt and status = 'processing');
end;
$$;
grant execute on function begin_job_tx(uuid, uuid, integer) to geniehelper_app;

-- Retention pruning runs as the system role: it may delete finished records and nothing else.
grant delete on media_jobs to geniehelper_system;
create policy system_deletes_finished_only on media_jobs as restrictive
    for delete to geniehelper_system
    using (status in ('completed', 'failed', 'cancelled'));
