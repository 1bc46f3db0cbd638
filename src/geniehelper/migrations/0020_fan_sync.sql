-- 0020 scrape scheduling and fan sync
--
-- scrape_scheduler: every active connection carries its next scrape time (current state, on the
-- primary record). The scheduler (system role) claims due connections and moves next_scrape_at to
-- the connection's next slot in the same UPDATE, so no later claim (nor a second copy) returns them.
-- NULL: never scheduled, due now.
alter table platform_connections add column next_scrape_at timestamptz;
comment on column platform_connections.next_scrape_at is
    'When scrape_scheduler next scrapes (or, auth expired, health-checks) this connection; NULL: due now.';

-- The claim's range scan: due (or never scheduled: -infinity) active connections, soonest first.
create index platform_connections_next_scrape_idx
    on platform_connections ((coalesce(next_scrape_at, '-infinity'::timestamptz)))
    where status = 'active';

-- The system role moves only the schedule (never user_id, tokens or health).
grant update (next_scrape_at, updated_at) on platform_connections to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- platform_sync_cursors: where the fan sync of one connection stands, per resource (fans,
-- subscriptions, transactions, messages). Written in the same transaction as the rows of the page
-- it covers, so a sync killed at any point resumes from the last committed page: no gap, and the
-- re-read page merges idempotently (no duplicate).
-- ---------------------------------------------------------------------------------------------
create table platform_sync_cursors (
    user_id                 uuid not null references creators (id) on delete cascade,
    platform_connection_id  uuid not null,
    resource                text not null
                            check (resource in ('fans', 'subscriptions', 'transactions', 'messages')),
    cursor                  text check (cursor <> ''),   -- the platform's cursor to read next; NULL: the start
    pages_read              bigint not null default 0 check (pages_read >= 0),
    items_read              bigint not null default 0 check (items_read >= 0),
    pass_started_at         timestamptz,
    last_pass_completed_at  timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    primary key (user_id, platform_connection_id, resource),
    foreign key (user_id, platform_connection_id)
        references platform_connections (user_id, id) on delete cascade
);

comment on table platform_sync_cursors is
    'Fan sync position per connection and resource; advanced in the transaction of the page it covers.';

create trigger platform_sync_cursors_touch_updated_at
    before update on platform_sync_cursors
    for each row execute function touch_updated_at();

alter table platform_sync_cursors enable row level security;
alter table platform_sync_cursors force row level security;
create policy tenant_isolation on platform_sync_cursors
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on platform_sync_cursors to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_subscriptions: one per fan account AND creator connection. A fan subscribed to two of a
-- creator's accounts on one platform has two subscriptions; keyed on the account alone, each
-- connection's sync would overwrite the other's state (and append its changes as events).
-- Rows from before this migration have no connection (NULL, a key of its own).
-- ---------------------------------------------------------------------------------------------
alter table fan_subscriptions add column platform_connection_id uuid;
alter table fan_subscriptions
    add constraint fan_subscriptions_connection_fkey foreign key (user_id, platform_connection_id)
        references platform_connections (user_id, id) on delete cascade;
alter table fan_subscriptions drop constraint fan_subscriptions_user_id_fan_platform_account_id_key;
create unique index fan_subscriptions_account_connection_key
    on fan_subscriptions (user_id, fan_platform_account_id, platform_connection_id) nulls not distinct;
create index fan_subscriptions_connection_idx on fan_subscriptions (user_id, platform_connection_id)
    where platform_connection_id is not null;
comment on column fan_subscriptions.platform_connection_id is
    'The creator account (connection) the fan subscribes to; part of the key with the fan account.';
