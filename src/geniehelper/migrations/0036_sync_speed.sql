-- 0036 the fan sync's initial sync at scale (issue #21, bench/README.md "sync").
--
-- 1. A page of transactions used to update the profile of each new transaction in the same statement
--    (lifetime spend, last purchase, last seen): with a page's transactions spread over as many fans,
--    an initial sync of 1,000,000 transactions updated profiles 1,000,000 times, each update a new
--    row version with an entry in every fan_profiles index (last_seen_at is indexed: the segments'
--    time-window edges read it) and a row in the segment change log. Now a page only notes its
--    profiles here (one row per profile, however many pages name it); the page that ends the pass
--    over the transactions recomputes the figures of the noted profiles in one statement and clears
--    them (geniehelper.domain.fan_sync.FLUSH_PROFILE_FIGURES). The notes commit with their page, so a
--    sync killed mid-pass leaves them for the run that resumes it.
-- 2. fan_transactions_time_idx (user_id, occurred_at desc) had no reader: every query by time reads
--    completed transactions only, which fan_transactions_completed_time_idx (0029) serves. Each
--    inserted transaction wrote an entry into it.

create table fan_sync_pending_figures (
    user_id         uuid not null,   -- no foreign keys: a note outliving its profile is dropped at the flush
    fan_profile_id  uuid not null,
    primary key (user_id, fan_profile_id)
);

comment on table fan_sync_pending_figures is
    'Profiles whose composite figures wait for the end of the fan sync''s pass over transactions (0036).';

alter table fan_sync_pending_figures enable row level security;
alter table fan_sync_pending_figures force row level security;
create policy tenant_isolation on fan_sync_pending_figures
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, delete on fan_sync_pending_figures to geniehelper_app;

drop index fan_transactions_time_idx;
