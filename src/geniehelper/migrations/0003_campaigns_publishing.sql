-- 0003 campaigns & publishing
--
-- campaigns (Campaigns & Analytics domain; created here because content_posts references it),
-- content_series, content_ideas, content_posts, scheduled_posts, post_performance_snapshots.
-- Campaigns (bounded) and series (ongoing) are deliberately separate tables; a post may belong
-- to either or both.

-- ---------------------------------------------------------------------------------------------
-- campaigns: bounded promotional events.
-- ---------------------------------------------------------------------------------------------
create table campaigns (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    name                    text not null check (name <> ''),
    description             text,
    goal                    text,   -- the promotional goal, in the creator's words
    status                  text not null default 'draft'
                            check (status in ('draft', 'active', 'paused', 'completed', 'cancelled')),
    starts_at               timestamptz not null,
    ends_at                 timestamptz not null,
    revenue_target          numeric(12, 2) check (revenue_target >= 0),
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    platforms               text[] not null default '{}',   -- platforms the campaign runs on
    attribution_window_days integer not null default 7
                            check (attribution_window_days between 0 and 365),
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    check (ends_at > starts_at),
    unique (user_id, id)
);

comment on table campaigns is
    'Bounded promotional campaigns: start/end, revenue target, platforms and attribution window. '
    'Not a content series.';

create index campaigns_user_starts_idx on campaigns (user_id, starts_at desc);
create index campaigns_active_idx on campaigns (user_id, ends_at) where status = 'active';

create trigger campaigns_touch_updated_at
    before update on campaigns
    for each row execute function touch_updated_at();

alter table campaigns enable row level security;
alter table campaigns force row level security;
create policy tenant_isolation on campaigns
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on campaigns to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- content_series: ongoing editorial tracks. No end date by design.
-- ---------------------------------------------------------------------------------------------
create table content_series (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    description         text,
    cadence             text not null default 'weekly'
                        check (cadence in ('daily', 'weekly', 'biweekly', 'monthly', 'irregular')),
    default_platforms   text[] not null default '{}',
    default_hashtags    text[] not null default '{}',
    status              text not null default 'active'
                        check (status in ('active', 'paused', 'retired')),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (user_id, name),
    unique (user_id, id)
);

comment on table content_series is
    'Ongoing editorial tracks (e.g. "Monday Motivation"): a recurring theme with a cadence and '
    'no end date. Not a campaign.';

create trigger content_series_touch_updated_at
    before update on content_series
    for each row execute function touch_updated_at();

alter table content_series enable row level security;
alter table content_series force row level security;
create policy tenant_isolation on content_series
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on content_series to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- content_ideas: AI-generated and creator-submitted ideas; scored; promotable to a draft
-- (the draft points back through content_posts.source_idea_id). Taxonomy tags: taxonomy_mappings.
-- ---------------------------------------------------------------------------------------------
create table content_ideas (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    title               text not null check (title <> ''),
    body                text,
    source              text not null default 'creator' check (source in ('ai', 'creator')),
    ai_score            numeric(4, 3) check (ai_score between 0 and 1),
    score_reason        text,
    scored_at           timestamptz,
    suggested_platforms text[] not null default '{}',
    series_id           uuid,
    status              text not null default 'new'
                        check (status in ('new', 'shortlisted', 'promoted', 'dismissed')),
    promoted_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, series_id)
        references content_series (user_id, id) on delete set null (series_id),
    unique (user_id, id)
);

comment on table content_ideas is
    'Content ideas (AI or creator), AI-scored 0-1, optionally for a series; promoted ideas '
    'become content_posts (content_posts.source_idea_id).';

create index content_ideas_user_status_idx on content_ideas (user_id, status, ai_score desc nulls last);
create index content_ideas_series_idx on content_ideas (user_id, series_id) where series_id is not null;

create trigger content_ideas_touch_updated_at
    before update on content_ideas
    for each row execute function touch_updated_at();

alter table content_ideas enable row level security;
alter table content_ideas force row level security;
create policy tenant_isolation on content_ideas
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on content_ideas to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- content_posts: drafts and published posts (platform-independent content). media_asset_ids is
-- the ordered attachment list (array: no FK); media_asset_usages is the queryable usage link.
-- ---------------------------------------------------------------------------------------------
create table content_posts (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    title               text,
    caption             text not null default '',
    hashtags            text[] not null default '{}',
    cta_links           jsonb not null default '[]' check (jsonb_typeof(cta_links) = 'array'),
    audience_targeting  jsonb not null default '{}' check (jsonb_typeof(audience_targeting) = 'object'),
    platform_targets    text[] not null default '{}',
    media_asset_ids     uuid[] not null default '{}',
    ab_variant_of       uuid,
    ab_variant_label    text,
    status              text not null default 'draft'
                        check (status in ('idea', 'draft', 'scheduled', 'published', 'archived')),
    campaign_id         uuid,
    series_id           uuid,
    source_idea_id      uuid,
    published_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (ab_variant_of <> id),
    foreign key (user_id, ab_variant_of)
        references content_posts (user_id, id) on delete set null (ab_variant_of),
    foreign key (user_id, campaign_id)
        references campaigns (user_id, id) on delete set null (campaign_id),
    foreign key (user_id, series_id)
        references content_series (user_id, id) on delete set null (series_id),
    foreign key (user_id, source_idea_id)
        references content_ideas (user_id, id) on delete set null (source_idea_id),
    unique (user_id, id)
);

comment on table content_posts is
    'Post content and lifecycle (idea/draft/scheduled/published/archived): caption, hashtags, '
    'CTA links, targeting, platform targets, attachments, A/B variant link, campaign/series.';

create index content_posts_user_created_idx on content_posts (user_id, created_at desc);
create index content_posts_user_status_idx on content_posts (user_id, status);
create index content_posts_campaign_idx on content_posts (user_id, campaign_id) where campaign_id is not null;
create index content_posts_series_idx on content_posts (user_id, series_id) where series_id is not null;
create index content_posts_variant_idx on content_posts (user_id, ab_variant_of) where ab_variant_of is not null;
create index content_posts_idea_idx on content_posts (user_id, source_idea_id) where source_idea_id is not null;

create trigger content_posts_touch_updated_at
    before update on content_posts
    for each row execute function touch_updated_at();

alter table content_posts enable row level security;
alter table content_posts force row level security;
create policy tenant_isolation on content_posts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on content_posts
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update, delete on content_posts to geniehelper_app;
grant select on content_posts to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- scheduled_posts: the publish queue, one row per post per target connection. The
-- post_scheduler claims due rows (status 'scheduled', scheduled_time <= now()) and enqueues
-- publish_post with a job key derived from (id, revision).
-- ---------------------------------------------------------------------------------------------
create table scheduled_posts (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    content_post_id         uuid not null,
    platform_connection_id  uuid not null,
    platform                text not null,
    scheduled_time          timestamptz not null,
    status                  text not null default 'scheduled'
                            check (status in ('draft', 'scheduled', 'queued', 'publishing', 'posted',
                                   'failed', 'missed', 'cancelled')),
    revision                integer not null default 1 check (revision >= 1),
    queued_at               timestamptz,
    publishing_started_at   timestamptz,
    posted_at               timestamptz,
    external_post_id        text,
    external_post_url       text,
    error_message           text,
    attempts                integer not null default 0 check (attempts >= 0),
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    foreign key (user_id, content_post_id)
        references content_posts (user_id, id) on delete cascade,
    -- platform must be the connection's platform
    foreign key (user_id, platform_connection_id, platform)
        references platform_connections (user_id, id, platform) on delete cascade,
    unique (user_id, id)
);

comment on table scheduled_posts is
    'Publish queue: a content post scheduled on one platform connection. revision is bumped on '
    'every reschedule/edit after scheduling; posted rows carry the external post id/url.';

-- post_scheduler claim query
create index scheduled_posts_due_idx on scheduled_posts (scheduled_time) where status = 'scheduled';
-- reconciliation of claimed-but-unfinished rows (queued/publishing for too long)
create index scheduled_posts_in_flight_idx
    on scheduled_posts (status, queued_at) where status in ('queued', 'publishing');
create index scheduled_posts_post_idx on scheduled_posts (user_id, content_post_id);
create index scheduled_posts_connection_idx
    on scheduled_posts (user_id, platform_connection_id, scheduled_time);
-- one scheduled post per external post: maps scraped performance back, blocks double-recording
create unique index scheduled_posts_external_post_key
    on scheduled_posts (user_id, platform_connection_id, external_post_id)
    where external_post_id is not null;

create trigger scheduled_posts_touch_updated_at
    before update on scheduled_posts
    for each row execute function touch_updated_at();

alter table scheduled_posts enable row level security;
alter table scheduled_posts force row level security;
create policy tenant_isolation on scheduled_posts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on scheduled_posts
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update, delete on scheduled_posts to geniehelper_app;
grant select, update on scheduled_posts to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- post_performance_snapshots (APPEND-ONLY): point-in-time engagement per published post, one
-- row per scrape. NO ACTION references: a post with snapshots is archived, not deleted.
-- ---------------------------------------------------------------------------------------------
create table post_performance_snapshots (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id),
    content_post_id     uuid,
    scheduled_post_id   uuid,
    platform            text not null check (platform <> ''),
    external_post_id    text not null check (external_post_id <> ''),
    captured_at         timestamptz not null default now(),
    views               bigint check (views >= 0),
    likes               bigint check (likes >= 0),
    comments            bigint check (comments >= 0),
    shares              bigint check (shares >= 0),
    ppv_revenue         numeric(12, 2) check (ppv_revenue >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    created_at          timestamptz not null default now(),
    foreign key (user_id, content_post_id) references content_posts (user_id, id),
    foreign key (user_id, scheduled_post_id) references scheduled_posts (user_id, id),
    -- one row per scrape event per post; a retried scrape is ON CONFLICT DO NOTHING
    unique (user_id, platform, external_post_id, captured_at)
);

comment on table post_performance_snapshots is
    'APPEND-ONLY. Per-post engagement snapshots (views, likes, comments, shares, PPV revenue), '
    'one row per scrape. Answers "how did this post perform?".';

create index post_performance_snapshots_post_idx
    on post_performance_snapshots (user_id, content_post_id, captured_at desc)
    where content_post_id is not null;
create index post_performance_snapshots_scheduled_idx
    on post_performance_snapshots (user_id, scheduled_post_id, captured_at desc)
    where scheduled_post_id is not null;

create trigger post_performance_snapshots_append_only
    before update or delete on post_performance_snapshots
    for each row execute function refuse_append_only_change();
create trigger post_performance_snapshots_append_only_truncate
    before truncate on post_performance_snapshots
    for each statement execute function refuse_append_only_change();

alter table post_performance_snapshots enable row level security;
alter table post_performance_snapshots force row level security;
create policy tenant_isolation on post_performance_snapshots
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on post_performance_snapshots
    from geniehelper_app, geniehelper_system, public;
grant select, insert on post_performance_snapshots to geniehelper_app;
