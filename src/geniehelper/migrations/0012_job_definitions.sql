-- Job records for any job definition: a generic subject, system-scope jobs, per-key concurrency.

-- A generic subject (what the job is about: a scheduled post, a media asset, a platform connection)
-- replaces a column per subject type.
alter table media_jobs
    add column subject_type text check (subject_type <> ''),
    add column subject_id uuid,
    add constraint media_jobs_subject_complete check ((subject_type is null) = (subject_id is null));
update media_jobs set subject_type = 'scheduled_post', subject_id = scheduled_post_id where scheduled_post_id is not null;
update media_jobs set subject_type = 'media_asset', subject_id = media_asset_id
 where media_asset_id is not null and subject_id is null;
alter table media_jobs drop column scheduled_post_id, drop column media_asset_id;
create index media_jobs_subject_idx on media_jobs (subject_type, subject_id, user_id)
    where subject_id is not null;
comment on column media_jobs.subject_type is 'What the job is about (scheduled_post, media_asset, ...), with subject_id.';

-- Priority was stored and honoured by nothing: removed rather than promised.
alter table media_jobs drop column priority;

-- Per-key concurrency: at most N processing records share a key (e.g. one sync per connection);
-- counted within the record's scope (one creator's jobs, or the system's).
alter table media_jobs add column concurrency_key text check (concurrency_key <> '');
create index media_jobs_concurrency_idx on media_jobs (concurrency_key)
    where status = 'processing' and concurrency_key is not null;

-- System-scope jobs (rollups, pruning, alert delivery) have no creator: user_id NULL. The app role
-- never sees them (its policy compares user_id with the current creator); the system role records
-- and runs them, and may insert no creator's job.
alter table media_jobs alter column user_id drop not null;
drop index media_jobs_active_key_idx;
create unique index media_jobs_active_key_idx on media_jobs (user_id, job_key) nulls not distinct
    where status in ('queued', 'processing');
grant insert on media_jobs to geniehelper_system;
create policy system_inserts_system_jobs_only on media_jobs as restrictive
    for insert to geniehelper_system
    with check (user_id is null);

-- A system job's transaction: whether the attempt still owns the record (no creator to set).
create function begin_system_job_tx(p_job_id uuid, p_attempt integer) returns boolean
language sql as $$
    select exists (select 1 from media_jobs
                    where id = p_job_id and user_id is null and attempts = p_attempt and status = 'processing');
$$;
grant execute on function begin_system_job_tx(uuid, integer) to geniehelper_system;

-- Fair queues: the dispatcher finds the creators with unpushed jobs by a skip scan of this index
-- (one probe per creator), then each creator's oldest.
create index media_jobs_fair_idx on media_jobs (queue, user_id, created_at)
    where status = 'queued' and enqueued_at is null;
