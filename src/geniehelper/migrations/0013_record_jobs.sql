-- Recording jobs in one round trip: a call outside any transaction acts for the creator it names
-- (when the caller's transaction acts for a creator already, that one stays: RLS then refuses the
-- records of any other), inserts the records whose key has no active record, and returns those
-- together with the active records of the keys that had one (created = false). A key whose
-- conflicting record is not visible yet to this statement (its producer's commit raced it) is in
-- neither: the caller asks again.
create function record_jobs(
    p_user_id uuid, p_job_name text, p_queue text, p_max_attempts integer, p_keys text[], p_payloads jsonb[],
    p_run_ats timestamptz[], p_subject_types text[], p_subject_ids uuid[], p_concurrency_keys text[]
) returns table (
    id uuid, job_key text, job_name text, status text, enqueued_at timestamptz, run_at timestamptz,
    dispatch_no integer, created boolean
)
language plpgsql as $$
#variable_conflict use_column
begin
    if p_user_id is not null and coalesce(current_setting('app.user_id', true), '') = '' then
        perform set_config('app.user_id', p_user_id::text, true);
    end if;
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
      from media_jobs m
     where m.user_id is not distinct from p_user_id and m.job_key = any(p_keys)
       and m.status in ('queued', 'processing')
       and m.job_key not in (select i.job_key from inserted i);
end;
$$;
grant execute on function record_jobs(uuid, text, text, integer, text[], jsonb[], timestamptz[], text[], uuid[], text[])
    to geniehelper_app, geniehelper_system;
