-- 0002 creator & platform domain
--
-- creator_profiles, platform_connections, platform_health_checks, platform_stats_snapshots,
-- subscription_events, user_usage_counts.
--
-- Conventions used in every domain file (docs/data-model.md):
--   * user_id references creators; mutable tables cascade on creator deletion, append-only
--     tables do not (deleting a creator who has ledger rows is refused).
--   * Referenced tables carry unique (user_id, id); references are composite
--     (user_id, x_id) -> x (user_id, id), so a row never points at another creator's row.
--   * ENABLE + FORCE row level security, policy tenant_isolation for geniehelper_app, and a
--     narrowly granted system_scan policy where geniehelper_system needs the table.

-- ---------------------------------------------------------------------------------------------
-- creator_profiles: one per creator. Onboarding state machine, persona, display fields.
-- Credentials are NOT here: they live only on platform_connections (encrypted).
-- ---------------------------------------------------------------------------------------------
create table creator_profiles (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null unique references creators (id) on delete cascade,
    onboarding_state    text not null default 'registered'
                        check (onboarding_state in ('registered', 'platform_connected',
                               'connection_verified', 'initial_sync', 'persona_built', 'ready',
                               'needs_attention', 'failed')),
    onboarding_error    text,
    onboarding_state_changed_at timestamptz not null default now(),
    persona             jsonb not null default '{}' check (jsonb_typeof(persona) = 'object'),
    timezone            text not null default 'UTC' check (timezone <> ''),
    display_name        text,
    bio                 text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (user_id, id)
);

comment on table creator_profiles is
    'One per creator: onboarding_state machine, persona configuration, display name/bio, '
    'timezone. Platform accounts and credentials live on platform_connections.';

create trigger creator_profiles_touch_updated_at
    before update on creator_profiles
    for each row execute function touch_updated_at();

alter table creator_profiles enable row level security;
alter table creator_profiles force row level security;
create policy tenant_isolation on creator_profiles
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on creator_profiles to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- platform_connections: one per creator per platform account. Current state only (connection
-- status, health, follower/subscriber counts); history is in platform_stats_snapshots and
-- platform_health_checks.
-- ---------------------------------------------------------------------------------------------
create table platform_connections (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    platform                text not null check (platform <> ''),
    external_account_id     text not null check (external_account_id <> ''),
    handle                  text,
    api_base_url            text,
    auth_token_enc          text,   -- encrypted credential string; never plaintext
    refresh_token_enc       text,   -- encrypted; never plaintext
    credential_key_id       text,   -- which key encrypted the two columns above (rotation)
    session_state           jsonb not null default '{}' check (jsonb_typeof(session_state) = 'object'),
    status                  text not null default 'active'
                            check (status in ('active', 'paused', 'disconnected')),
    health                  text not null default 'unknown'
                            check (health in ('unknown', 'healthy', 'unhealthy', 'auth_expired')),
    health_reason           text,
    last_health_check_at    timestamptz,
    last_scraped_at         timestamptz,
    follower_count          integer check (follower_count >= 0),
    subscriber_count        integer check (subscriber_count >= 0),
    stats_updated_at        timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    unique (user_id, platform, external_account_id),
    unique (user_id, id),
    -- lets scheduled_posts carry a denormalised platform that must match its connection
    unique (user_id, id, platform)
);

comment on table platform_connections is
    'Connection per creator per platform account: encrypted credentials (*_enc, key id), '
    'session state, status, current health and current follower/subscriber counts.';

-- scrape_scheduler: active connections, least recently checked first.
create index platform_connections_active_idx
    on platform_connections (last_health_check_at nulls first)
    where status = 'active';

create trigger platform_connections_touch_updated_at
    before update on platform_connections
    for each row execute function touch_updated_at();

alter table platform_connections enable row level security;
alter table platform_connections force row level security;
create policy tenant_isolation on platform_connections
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on platform_connections
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update, delete on platform_connections to geniehelper_app;
grant select on platform_connections to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- platform_health_checks: per-connection auth/session health log, one row per check (written by
-- the scrape_scheduler). Insert-only by privilege (no UPDATE/DELETE grants) but not a ledger:
-- rows go with their connection or creator, and retention pruning is a maintenance operation.
-- ---------------------------------------------------------------------------------------------
create table platform_health_checks (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    platform_connection_id  uuid not null,
    checked_at              timestamptz not null default now(),
    auth_ok                 boolean not null,
    latency_ms              integer check (latency_ms >= 0),
    error_class             text,
    error_message           text,
    created_at              timestamptz not null default now(),
    foreign key (user_id, platform_connection_id)
        references platform_connections (user_id, id) on delete cascade
);

comment on table platform_health_checks is
    'Health log: one row per auth/session check of a platform connection (scrape_scheduler).';

create index platform_health_checks_connection_idx
    on platform_health_checks (user_id, platform_connection_id, checked_at desc);

alter table platform_health_checks enable row level security;
alter table platform_health_checks force row level security;
create policy tenant_isolation on platform_health_checks
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on platform_health_checks
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert on platform_health_checks to geniehelper_app;
grant insert on platform_health_checks to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- platform_stats_snapshots (APPEND-ONLY): account-level growth time series, one row per scrape
-- per connection. References are NO ACTION: a connection (or creator) with history is not
-- deleted; it is disconnected.
-- ---------------------------------------------------------------------------------------------
create table platform_stats_snapshots (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id),
    platform_connection_id  uuid not null,
    platform                text not null check (platform <> ''),
    captured_at             timestamptz not null default now(),
    follower_count          integer check (follower_count >= 0),
    subscriber_count        integer check (subscriber_count >= 0),
    churn_rate              numeric(7, 6) check (churn_rate between 0 and 1),  -- fraction, not %
    created_at              timestamptz not null default now(),
    foreign key (user_id, platform_connection_id, platform)
        references platform_connections (user_id, id, platform),
    -- one row per scrape: a retried scrape with the same captured_at is ON CONFLICT DO NOTHING
    unique (user_id, platform_connection_id, captured_at)
);

comment on table platform_stats_snapshots is
    'APPEND-ONLY. Account growth time series: follower/subscriber counts and churn rate (0-1) '
    'per connection per scrape. Current values live on platform_connections.';

create trigger platform_stats_snapshots_append_only
    before update or delete on platform_stats_snapshots
    for each row execute function refuse_append_only_change();
create trigger platform_stats_snapshots_append_only_truncate
    before truncate on platform_stats_snapshots
    for each statement execute function refuse_append_only_change();

alter table platform_stats_snapshots enable row level security;
alter table platform_stats_snapshots force row level security;
create policy tenant_isolation on platform_stats_snapshots
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on platform_stats_snapshots
    from geniehelper_app, geniehelper_system, public;
grant select, insert on platform_stats_snapshots to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- subscription_events (APPEND-ONLY): the creator's tier change ledger. creators.tier is the
-- current value.
-- ---------------------------------------------------------------------------------------------
create table subscription_events (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id),
    event_type          text not null
                        check (event_type in ('upgrade', 'downgrade', 'trial_start', 'trial_end',
                               'cancellation', 'reactivation')),
    from_tier           text check (from_tier in ('starter', 'creator', 'pro', 'studio')),
    to_tier             text check (to_tier in ('starter', 'creator', 'pro', 'studio')),
    occurred_at         timestamptz not null default now(),
    external_event_id   text,   -- billing provider's event id, for idempotent ingestion
    payload             jsonb,
    created_at          timestamptz not null default now(),
    unique (user_id, external_event_id)
);

comment on table subscription_events is
    'APPEND-ONLY. Creator tier change ledger (upgrade, downgrade, trial, cancellation, '
    'reactivation). The current tier is creators.tier.';

create index subscription_events_user_idx on subscription_events (user_id, occurred_at desc);

create trigger subscription_events_append_only
    before update or delete on subscription_events
    for each row execute function refuse_append_only_change();
create trigger subscription_events_append_only_truncate
    before truncate on subscription_events
    for each statement execute function refuse_append_only_change();

alter table subscription_events enable row level security;
alter table subscription_events force row level security;
create policy tenant_isolation on subscription_events
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on subscription_events
    from geniehelper_app, geniehelper_system, public;
grant select, insert on subscription_events to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- user_usage_counts: current-period operation counters for tier quotas. Natural key; admission
-- is `UPDATE ... SET used = used + 1 WHERE ... AND used + 1 <= limit RETURNING`.
-- ---------------------------------------------------------------------------------------------
create table user_usage_counts (
    user_id         uuid not null references creators (id) on delete cascade,
    operation       text not null check (operation <> ''),
    period_start    date not null,
    used            integer not null default 0 check (used >= 0),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    primary key (user_id, operation, period_start)
);

comment on table user_usage_counts is
    'Per-creator operation counters per quota period (period_start = first day of the period), '
    'checked before enqueue against the tier limits.';

create trigger user_usage_counts_touch_updated_at
    before update on user_usage_counts
    for each row execute function touch_updated_at();

alter table user_usage_counts enable row level security;
alter table user_usage_counts force row level security;
create policy tenant_isolation on user_usage_counts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on user_usage_counts to geniehelper_app;
