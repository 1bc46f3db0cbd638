-- 0005 campaigns & analytics
--
-- campaign_platform_performance, campaign_content_performance (Sprint 12), creator_earnings,
-- creator_goals, creator_goal_snapshots (Sprint 12). campaigns is in 0003;
-- post_performance_snapshots in 0003; platform_stats_snapshots in 0002.

-- ---------------------------------------------------------------------------------------------
-- campaign_platform_performance: current totals per campaign per platform (updated in place
-- by the scrape_scheduler; upsert on the natural key).
-- ---------------------------------------------------------------------------------------------
create table campaign_platform_performance (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    campaign_id         uuid not null,
    platform            text not null check (platform <> ''),
    impressions         bigint not null default 0 check (impressions >= 0),
    clicks              bigint not null default 0 check (clicks >= 0),
    conversions         integer not null default 0 check (conversions >= 0),
    attributed_revenue  numeric(12, 2) not null default 0 check (attributed_revenue >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    measured_at         timestamptz,    -- when these totals were last computed
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, campaign_id) references campaigns (user_id, id) on delete cascade,
    unique (user_id, campaign_id, platform)
);

comment on table campaign_platform_performance is
    'Per campaign per platform: impressions, clicks, conversions, attributed revenue (current '
    'totals, upserted).';

create trigger campaign_platform_performance_touch_updated_at
    before update on campaign_platform_performance
    for each row execute function touch_updated_at();

alter table campaign_platform_performance enable row level security;
alter table campaign_platform_performance force row level security;
create policy tenant_isolation on campaign_platform_performance
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on campaign_platform_performance to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- campaign_content_performance (Sprint 12 gap): current totals per content piece within a
-- campaign, per platform. Rolled up from post_performance_snapshots inside the attribution
-- window; upsert on the natural key.
-- ---------------------------------------------------------------------------------------------
create table campaign_content_performance (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    campaign_id         uuid not null,
    content_post_id     uuid not null,
    platform            text not null check (platform <> ''),
    impressions         bigint not null default 0 check (impressions >= 0),
    views               bigint not null default 0 check (views >= 0),
    likes               bigint not null default 0 check (likes >= 0),
    comments            bigint not null default 0 check (comments >= 0),
    shares              bigint not null default 0 check (shares >= 0),
    conversions         integer not null default 0 check (conversions >= 0),
    attributed_revenue  numeric(12, 2) not null default 0 check (attributed_revenue >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    measured_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, campaign_id) references campaigns (user_id, id) on delete cascade,
    foreign key (user_id, content_post_id) references content_posts (user_id, id) on delete cascade,
    unique (user_id, campaign_id, content_post_id, platform)
);

comment on table campaign_content_performance is
    'Per content piece within a campaign, per platform: engagement, conversions, attributed '
    'revenue (current totals, upserted). Sprint 12.';

create index campaign_content_performance_post_idx
    on campaign_content_performance (user_id, content_post_id);

create trigger campaign_content_performance_touch_updated_at
    before update on campaign_content_performance
    for each row execute function touch_updated_at();

alter table campaign_content_performance enable row level security;
alter table campaign_content_performance force row level security;
create policy tenant_isolation on campaign_content_performance
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on campaign_content_performance to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- creator_earnings: period revenue rollup, one row per creator x period x platform x content
-- type. Upserted while the period is open (a scrape refreshes the open period), final once
-- finalized_at is set. Not in the seed's append-only list: see docs/data-model.md.
-- ---------------------------------------------------------------------------------------------
create table creator_earnings (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    period_kind         text not null default 'month'
                        check (period_kind in ('day', 'week', 'month', 'billing_cycle')),
    period_start        date not null,
    period_end          date not null,       -- inclusive
    platform            text not null check (platform <> ''),
    content_type        text not null
                        check (content_type in ('subscription', 'ppv', 'tip', 'paid_message',
                               'custom_request', 'bundle', 'other')),
    gross_amount        numeric(12, 2) not null default 0 check (gross_amount >= 0),
    fees_amount         numeric(12, 2) not null default 0 check (fees_amount >= 0),
    net_amount          numeric(12, 2) not null default 0,   -- may be negative (refunds)
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    transaction_count   integer not null default 0 check (transaction_count >= 0),
    captured_at         timestamptz not null default now(),
    finalized_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (period_end >= period_start),
    unique (user_id, period_kind, period_start, platform, content_type)
);

comment on table creator_earnings is
    'Period revenue rollup per platform and content type. Answers "what did I earn this '
    'period?". Upserted while open; finalized_at marks a closed period.';

create index creator_earnings_period_idx on creator_earnings (user_id, period_start desc);

create trigger creator_earnings_touch_updated_at
    before update on creator_earnings
    for each row execute function touch_updated_at();

alter table creator_earnings enable row level security;
alter table creator_earnings force row level security;
create policy tenant_isolation on creator_earnings
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on creator_earnings to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- creator_goals: targets with current progress (current state; history in
-- creator_goal_snapshots).
-- ---------------------------------------------------------------------------------------------
create table creator_goals (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    metric              text not null
                        check (metric in ('revenue', 'subscribers', 'followers', 'engagement_rate',
                               'posts_published', 'custom')),
    platform            text,                -- NULL = across all platforms
    target_value        numeric(14, 2) not null check (target_value > 0),
    baseline_value      numeric(14, 2) not null default 0,
    current_value       numeric(14, 2),
    currency            char(3) default 'USD' check (currency ~ '^[A-Z]{3}$'),
    progress_pct        numeric(5, 2) not null default 0 check (progress_pct between 0 and 100),
    status              text not null default 'active'
                        check (status in ('active', 'achieved', 'missed', 'archived')),
    starts_on           date not null default current_date,
    due_on              date,
    achieved_at         timestamptz,
    last_evaluated_at   timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (due_on is null or due_on >= starts_on),
    check (metric <> 'revenue' or currency is not null),
    unique (user_id, id)
);

comment on table creator_goals is
    'Creator targets (revenue, subscribers, followers, engagement, posts) with current value and '
    'progress 0-100, updated by the scrape/analytics jobs.';

create index creator_goals_active_idx on creator_goals (user_id) where status = 'active';

create trigger creator_goals_touch_updated_at
    before update on creator_goals
    for each row execute function touch_updated_at();

alter table creator_goals enable row level security;
alter table creator_goals force row level security;
create policy tenant_isolation on creator_goals
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on creator_goals to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- creator_goal_snapshots (Sprint 12 gap): progress over time. Insert-only by PRIVILEGE (the
-- app and system roles have no UPDATE/DELETE/TRUNCATE), but not trigger-enforced: snapshots
-- belong to a user-editable goal and go with it when the goal (or creator) is deleted.
-- ---------------------------------------------------------------------------------------------
create table creator_goal_snapshots (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    creator_goal_id     uuid not null,
    captured_at         timestamptz not null default now(),
    current_value       numeric(14, 2) not null,
    progress_pct        numeric(5, 2) not null check (progress_pct between 0 and 100),
    created_at          timestamptz not null default now(),
    foreign key (user_id, creator_goal_id) references creator_goals (user_id, id) on delete cascade,
    unique (user_id, creator_goal_id, captured_at)
);

comment on table creator_goal_snapshots is
    'Point-in-time goal progress (insert-only by privilege; deleted with its goal). Sprint 12.';

alter table creator_goal_snapshots enable row level security;
alter table creator_goal_snapshots force row level security;
create policy tenant_isolation on creator_goal_snapshots
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on creator_goal_snapshots
    from geniehelper_app, geniehelper_system, public;
grant select, insert on creator_goal_snapshots to geniehelper_app;
