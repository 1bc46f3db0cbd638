-- 0022 domain_events: the outbox of what happened to a creator's fans, for automation to follow
-- (docs/events.md).
--
-- The fan sync writes an event in the same statement as the row it comes from (a new subscription
-- event, purchase, tip or inbound message), so an event exists exactly when its row does: once,
-- however often a page is read again (source_key is unique per creator). A segment refresh writes
-- segment_join / segment_leave with the membership rows it inserts and deletes.
--
-- Consumers follow the cursor (xact_id, id). An identity id alone is not a safe cursor: a
-- transaction that took a lower id may commit after one with a higher id has been read. xact_id is
-- the writing transaction's id, and readers take only events of transactions older than every
-- transaction still running (pg_snapshot_xmin), so nothing can later appear behind the cursor.

create table domain_events (
    id                      bigint generated always as identity primary key,
    user_id                 uuid not null references creators (id) on delete cascade,
    event_type              text not null
                            check (event_type in ('new_subscriber', 'rebill', 'cancellation', 'win_back', 'tip',
                                                  'purchase', 'message_received', 'segment_join', 'segment_leave')),
    fan_profile_id          uuid,
    fan_platform_account_id uuid,
    source_key              text not null check (source_key <> ''),
    occurred_at             timestamptz not null,
    payload                 jsonb not null default '{}' check (jsonb_typeof(payload) = 'object'),
    xact_id                 xid8 not null default pg_current_xact_id(),
    created_at              timestamptz not null default now(),
    unique (user_id, source_key)
);

comment on table domain_events is
    'APPEND-ONLY outbox of fan events (new subscriber, rebill, cancellation, win-back, tip, purchase, message '
    'received), written with the synced rows they come from; consumers follow (xact_id, id) (docs/events.md).';

create index domain_events_cursor_idx on domain_events (xact_id, id);

create trigger domain_events_append_only
    before update or delete on domain_events
    for each row execute function refuse_append_only_change();
create trigger domain_events_append_only_truncate
    before truncate on domain_events
    for each statement execute function refuse_append_only_change();

alter table domain_events enable row level security;
alter table domain_events force row level security;
create policy tenant_isolation on domain_events
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on domain_events
    to geniehelper_system
    using (true);
revoke update, delete, truncate on domain_events from geniehelper_app, geniehelper_system, public;
grant select, insert on domain_events to geniehelper_app;
grant select on domain_events to geniehelper_system;
