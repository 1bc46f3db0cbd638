-- 0027 media jobs' measured memory, for the media worker's admission by a memory budget
--
-- One row per media job that finished its work (README, "Admission by a memory budget"): the
-- input's size and the peak memory the job took (its ffmpeg children's peak RSS from wait4, plus
-- the worker process's own RSS growth while it ran). The admission's estimates are made from the
-- recent rows of every creator, through media_memory_profile(), which returns numbers only.

create table media_job_measurements (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    job_id              uuid not null,
    operation           text not null check (operation <> ''),  -- job name ':' asset kind
    input_pixels        bigint check (input_pixels >= 0),
    input_duration_s    float8 check (input_duration_s >= 0),
    input_bytes         bigint check (input_bytes >= 0),
    tool_peak_rss_mb    float8 not null check (tool_peak_rss_mb >= 0),
    process_growth_mb   float8 not null check (process_growth_mb >= 0),
    peak_rss_mb         float8 not null check (peak_rss_mb >= 0),
    measured_at         timestamptz not null default now(),
    foreign key (user_id, job_id) references media_jobs (user_id, id) on delete cascade,
    unique (user_id, job_id)
);

comment on table media_job_measurements is
    'Peak memory of each media job that finished its work, with its input size: what the media '
    'worker''s admission estimates from (media_memory_profile).';

create index media_job_measurements_operation_idx on media_job_measurements (operation, measured_at desc);

alter table media_job_measurements enable row level security;
alter table media_job_measurements force row level security;
create policy tenant_isolation on media_job_measurements
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
-- The owner runs media_memory_profile() (SECURITY DEFINER) and is subject to forced RLS too.
do $$
begin
    execute format('create policy owner_functions on media_job_measurements to %I using (true) with check (true)',
                   current_user);
end
$$;
grant select, insert on media_job_measurements to geniehelper_app;

-- The latest p_per_operation measurements of each operation, every creator's, as numbers alone
-- (no creator, job or asset): memory depends on the machine and the input, not on whose it is.
create function media_memory_profile(p_per_operation integer)
returns table (operation text, input_pixels bigint, input_duration_s float8, peak_rss_mb float8)
language sql stable security definer set search_path = pg_catalog, public as $$
select m.operation, m.input_pixels, m.input_duration_s, m.peak_rss_mb
  from (select operation, input_pixels, input_duration_s, peak_rss_mb,
               row_number() over (partition by operation order by measured_at desc) as n
          from media_job_measurements) m
 where m.n <= p_per_operation
$$;
revoke execute on function media_memory_profile(integer) from public;
grant execute on function media_memory_profile(integer) to geniehelper_app;
