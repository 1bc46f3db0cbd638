-- 0006 fan CRM
--
-- A fan is a person, not a subscriber instance. fan_profiles is the identity hub (its id is an
-- internal surrogate); fan_platform_accounts holds the external identity and the DEDUP KEY
-- (user_id, platform, platform_fan_id). Fans with history are merged (merged_into_id), not
-- deleted: the append-only fan_subscription_events and automation_rule_actions refuse the
-- cascade.

-- ---------------------------------------------------------------------------------------------
-- fan_profiles
-- ---------------------------------------------------------------------------------------------
create table fan_profiles (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    display_name        text,
    status              text not null default 'active'
                        check (status in ('active', 'merged', 'blocked')),
    merged_into_id      uuid,            -- surviving profile when status = 'merged'
    lifecycle_stage     text not null default 'new'
                        check (lifecycle_stage in ('new', 'active', 'at_risk', 'churned',
                               'win_back', 'vip')),
    -- composite engagement and scoring summaries (details: fan_scores, fan_transactions)
    engagement_score    numeric(4, 3) check (engagement_score between 0 and 1),
    lifetime_spend      numeric(12, 2) not null default 0 check (lifetime_spend >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    message_count       integer not null default 0 check (message_count >= 0),
    first_seen_at       timestamptz,
    last_seen_at        timestamptz,
    last_message_at     timestamptz,
    last_purchase_at    timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (merged_into_id <> id),
    check ((status = 'merged') = (merged_into_id is not null)),
    -- a merged profile is the same person as its survivor: it goes with it
    foreign key (user_id, merged_into_id)
        references fan_profiles (user_id, id) on delete cascade,
    unique (user_id, id)
);

comment on table fan_profiles is
    'Canonical fan: one per real person per creator (surrogate id; never a dedup key). Engagement '
    'and spend summaries; merged profiles point at the survivor.';

create index fan_profiles_user_stage_idx on fan_profiles (user_id, lifecycle_stage);
create index fan_profiles_user_last_seen_idx on fan_profiles (user_id, last_seen_at desc nulls last);
create index fan_profiles_merged_idx on fan_profiles (user_id, merged_into_id)
    where merged_into_id is not null;

create trigger fan_profiles_touch_updated_at
    before update on fan_profiles
    for each row execute function touch_updated_at();

alter table fan_profiles enable row level security;
alter table fan_profiles force row level security;
create policy tenant_isolation on fan_profiles
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_profiles to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_platform_accounts: a fan's account on one platform. (user_id, platform, platform_fan_id)
-- is THE dedup key for fans.
-- ---------------------------------------------------------------------------------------------
create table fan_platform_accounts (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    fan_profile_id          uuid not null,
    platform                text not null check (platform <> ''),
    platform_fan_id         text not null check (platform_fan_id <> ''),
    platform_connection_id  uuid,        -- the creator account the fan is seen on
    username                text,
    display_name            text,
    profile_url             text,
    platform_metadata       jsonb not null default '{}' check (jsonb_typeof(platform_metadata) = 'object'),
    first_seen_at           timestamptz,
    last_seen_at            timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, platform_connection_id)
        references platform_connections (user_id, id) on delete set null (platform_connection_id),
    unique (user_id, platform, platform_fan_id),
    unique (user_id, id)
);

comment on table fan_platform_accounts is
    'A fan''s account on one platform. unique (user_id, platform, platform_fan_id) is the '
    'canonical fan dedup key.';

create index fan_platform_accounts_profile_idx on fan_platform_accounts (user_id, fan_profile_id);
create index fan_platform_accounts_connection_idx on fan_platform_accounts (user_id, platform_connection_id)
    where platform_connection_id is not null;

create trigger fan_platform_accounts_touch_updated_at
    before update on fan_platform_accounts
    for each row execute function touch_updated_at();

alter table fan_platform_accounts enable row level security;
alter table fan_platform_accounts force row level security;
create policy tenant_isolation on fan_platform_accounts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_platform_accounts to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_identity_links: two platform accounts of one person. Unordered pair stored once
-- (account_a_id < account_b_id). Suggested links wait for confirmation.
-- ---------------------------------------------------------------------------------------------
create table fan_identity_links (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    account_a_id        uuid not null,
    account_b_id        uuid not null,
    status              text not null default 'suggested'
                        check (status in ('suggested', 'confirmed', 'rejected')),
    source              text not null default 'creator'
                        check (source in ('ai', 'creator', 'rule', 'import')),
    confidence          numeric(4, 3) check (confidence between 0 and 1),
    evidence            jsonb not null default '{}' check (jsonb_typeof(evidence) = 'object'),
    confirmed_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (account_a_id < account_b_id),
    foreign key (user_id, account_a_id) references fan_platform_accounts (user_id, id) on delete cascade,
    foreign key (user_id, account_b_id) references fan_platform_accounts (user_id, id) on delete cascade,
    unique (user_id, account_a_id, account_b_id)
);

comment on table fan_identity_links is
    'Cross-platform identity link between two fan_platform_accounts of the same creator '
    '(unordered pair: account_a_id < account_b_id). confirmed = same person.';

create index fan_identity_links_b_idx on fan_identity_links (user_id, account_b_id);

create trigger fan_identity_links_touch_updated_at
    before update on fan_identity_links
    for each row execute function touch_updated_at();

alter table fan_identity_links enable row level security;
alter table fan_identity_links force row level security;
create policy tenant_isolation on fan_identity_links
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_identity_links to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_subscriptions: CURRENT subscription state per fan platform account (history:
-- fan_subscription_events).
-- ---------------------------------------------------------------------------------------------
create table fan_subscriptions (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    fan_profile_id          uuid not null,
    fan_platform_account_id uuid not null,
    platform                text not null check (platform <> ''),
    tier                    text,            -- the creator's fan-facing tier name
    status                  text not null default 'active'
                            check (status in ('trial', 'active', 'paused', 'cancelled', 'expired')),
    price                   numeric(12, 2) check (price >= 0),
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    auto_renew              boolean not null default true,
    started_at              timestamptz,
    renews_at               timestamptz,
    cancelled_at            timestamptz,
    expires_at              timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, fan_platform_account_id)
        references fan_platform_accounts (user_id, id) on delete cascade,
    unique (user_id, fan_platform_account_id)
);

comment on table fan_subscriptions is
    'Current subscription state per fan platform account: tier, status, price, renewal date.';

create index fan_subscriptions_profile_idx on fan_subscriptions (user_id, fan_profile_id);
-- renewal / churn-risk jobs
create index fan_subscriptions_renewal_idx on fan_subscriptions (user_id, renews_at)
    where status in ('trial', 'active');

create trigger fan_subscriptions_touch_updated_at
    before update on fan_subscriptions
    for each row execute function touch_updated_at();

alter table fan_subscriptions enable row level security;
alter table fan_subscriptions force row level security;
create policy tenant_isolation on fan_subscriptions
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_subscriptions to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_subscription_events (APPEND-ONLY): every fan subscription lifecycle event. Keyed to the
-- platform account (the stable external identity), NO ACTION references.
-- ---------------------------------------------------------------------------------------------
create table fan_subscription_events (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id),
    fan_platform_account_id uuid not null,
    event_type              text not null
                            check (event_type in ('subscribe', 'rebill', 'trial_start',
                                   'trial_conversion', 'cancellation', 'expiration', 'win_back',
                                   'price_change', 'refund')),
    occurred_at             timestamptz not null,
    tier                    text,
    amount                  numeric(12, 2) check (amount >= 0),
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    external_event_id       text,
    payload                 jsonb,
    created_at              timestamptz not null default now(),
    foreign key (user_id, fan_platform_account_id) references fan_platform_accounts (user_id, id),
    -- one row per event; a re-scraped event is ON CONFLICT DO NOTHING
    unique (user_id, fan_platform_account_id, event_type, occurred_at)
);

comment on table fan_subscription_events is
    'APPEND-ONLY. Fan subscription lifecycle events (subscribe, rebill, trial, cancellation, '
    'expiration, win-back, ...). Current state: fan_subscriptions.';

create index fan_subscription_events_user_time_idx
    on fan_subscription_events (user_id, occurred_at desc);

create trigger fan_subscription_events_append_only
    before update or delete on fan_subscription_events
    for each row execute function refuse_append_only_change();
create trigger fan_subscription_events_append_only_truncate
    before truncate on fan_subscription_events
    for each statement execute function refuse_append_only_change();

alter table fan_subscription_events enable row level security;
alter table fan_subscription_events force row level security;
create policy tenant_isolation on fan_subscription_events
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
revoke update, delete, truncate on fan_subscription_events
    from geniehelper_app, geniehelper_system, public;
grant select, insert on fan_subscription_events to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_messages: inbound and outbound messages, including drafts awaiting sending/approval.
-- ---------------------------------------------------------------------------------------------
create table fan_messages (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    fan_profile_id          uuid not null,
    fan_platform_account_id uuid not null,
    direction               text not null check (direction in ('inbound', 'outbound')),
    status                  text not null
                            check (status in ('received', 'draft', 'pending_approval', 'queued',
                                   'sent', 'delivered', 'failed', 'discarded')),
    body                    text not null default '',
    media_asset_ids         uuid[] not null default '{}',
    price                   numeric(12, 2) check (price >= 0),      -- paid DM / PPV message
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    external_message_id     text,
    occurred_at             timestamptz,     -- received or sent time
    in_reply_to_id          uuid,            -- the inbound message a draft/reply answers
    draft_source            text check (draft_source in ('ai', 'creator', 'template', 'automation')),
    draft_generated_at      timestamptz,
    sentiment_score         numeric(4, 3) check (sentiment_score between -1 and 1),
    sentiment_label         text,
    response_time_seconds   integer check (response_time_seconds >= 0),
    read_at                 timestamptz,
    error_message           text,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    check (direction = 'outbound' or status = 'received'),
    check (in_reply_to_id <> id),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, fan_platform_account_id)
        references fan_platform_accounts (user_id, id) on delete cascade,
    foreign key (user_id, in_reply_to_id)
        references fan_messages (user_id, id) on delete set null (in_reply_to_id),
    unique (user_id, fan_platform_account_id, external_message_id),
    unique (user_id, id)
);

comment on table fan_messages is
    'Inbound and outbound messages per fan (drafts included): sentiment, response time, paid '
    'price, reply/draft linkage (in_reply_to_id, draft_source).';

create index fan_messages_fan_time_idx on fan_messages (user_id, fan_profile_id, occurred_at desc);
create index fan_messages_pending_idx on fan_messages (user_id, status, created_at)
    where status in ('draft', 'pending_approval', 'queued');
create index fan_messages_reply_idx on fan_messages (user_id, in_reply_to_id)
    where in_reply_to_id is not null;

create trigger fan_messages_touch_updated_at
    before update on fan_messages
    for each row execute function touch_updated_at();

alter table fan_messages enable row level security;
alter table fan_messages force row level security;
create policy tenant_isolation on fan_messages
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_messages to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_memories: durable facts injected into message drafts.
-- ---------------------------------------------------------------------------------------------
create table fan_memories (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    fan_profile_id      uuid not null,
    kind                text not null
                        check (kind in ('preference', 'personal_detail', 'key_date',
                               'conversation_fact', 'boundary')),
    content             text not null check (content <> ''),
    memory_date         date,            -- for key dates (birthday, anniversary)
    source              text not null default 'creator' check (source in ('ai', 'creator', 'import')),
    source_message_id   uuid,
    confidence          numeric(4, 3) check (confidence between 0 and 1),
    is_active           boolean not null default true,
    last_used_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, source_message_id)
        references fan_messages (user_id, id) on delete set null (source_message_id)
);

comment on table fan_memories is
    'Durable per-fan facts (preferences, personal details, key dates, conversation facts) injected '
    'into message drafts.';

create index fan_memories_fan_idx on fan_memories (user_id, fan_profile_id) where is_active;
create index fan_memories_key_date_idx on fan_memories (user_id, memory_date)
    where kind = 'key_date' and is_active;

create trigger fan_memories_touch_updated_at
    before update on fan_memories
    for each row execute function touch_updated_at();

alter table fan_memories enable row level security;
alter table fan_memories force row level security;
create policy tenant_isolation on fan_memories
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_memories to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_notes: creator-authored notes (never injected automatically).
-- ---------------------------------------------------------------------------------------------
create table fan_notes (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    fan_profile_id      uuid not null,
    body                text not null check (body <> ''),
    pinned              boolean not null default false,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade
);

comment on table fan_notes is
    'Creator-authored freeform notes on a fan, shown in the dossier; not injected into drafts.';

create index fan_notes_fan_idx on fan_notes (user_id, fan_profile_id, created_at desc);

create trigger fan_notes_touch_updated_at
    before update on fan_notes
    for each row execute function touch_updated_at();

alter table fan_notes enable row level security;
alter table fan_notes force row level security;
create policy tenant_isolation on fan_notes
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_notes to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_scores: current scores per fan (recomputed in place by the analytics pipeline).
-- ---------------------------------------------------------------------------------------------
create table fan_scores (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    fan_profile_id      uuid not null,
    churn_risk          numeric(4, 3) check (churn_risk between 0 and 1),
    predicted_ltv       numeric(12, 2) check (predicted_ltv >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    upsell_readiness    numeric(4, 3) check (upsell_readiness between 0 and 1),
    loyalty             numeric(4, 3) check (loyalty between 0 and 1),
    model_version       text,
    explanation         jsonb not null default '{}' check (jsonb_typeof(explanation) = 'object'),
    computed_at         timestamptz not null default now(),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    unique (user_id, fan_profile_id)
);

comment on table fan_scores is
    'Current fan scores: churn risk, upsell readiness, loyalty (0-1), predicted LTV; one row per '
    'fan, recomputed in place.';

create index fan_scores_churn_idx on fan_scores (user_id, churn_risk desc nulls last);
create index fan_scores_computed_idx on fan_scores (user_id, computed_at);

create trigger fan_scores_touch_updated_at
    before update on fan_scores
    for each row execute function touch_updated_at();

alter table fan_scores enable row level security;
alter table fan_scores force row level security;
create policy tenant_isolation on fan_scores
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_scores to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_segments: dynamic segment definitions (rule set). The segment evaluation scheduler
-- (system role) scans them across creators.
-- ---------------------------------------------------------------------------------------------
create table fan_segments (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    description         text,
    rules               jsonb not null default '{}' check (jsonb_typeof(rules) = 'object'),
    status              text not null default 'active'
                        check (status in ('active', 'paused', 'archived')),
    member_count        integer not null default 0 check (member_count >= 0),
    last_evaluated_at   timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (user_id, name),
    unique (user_id, id)
);

comment on table fan_segments is
    'Dynamic audience segments: a rule set over behaviour, scores, spend, lifecycle stage. '
    'Materialized membership: fan_segment_members.';

-- segment evaluation scheduler: active segments, stalest first
create index fan_segments_evaluation_idx on fan_segments (last_evaluated_at nulls first)
    where status = 'active';

create trigger fan_segments_touch_updated_at
    before update on fan_segments
    for each row execute function touch_updated_at();

alter table fan_segments enable row level security;
alter table fan_segments force row level security;
create policy tenant_isolation on fan_segments
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on fan_segments
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update, delete on fan_segments to geniehelper_app;
grant select on fan_segments to geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- fan_segment_members: materialized membership (natural key), rewritten by the evaluation job.
-- ---------------------------------------------------------------------------------------------
create table fan_segment_members (
    user_id             uuid not null references creators (id) on delete cascade,
    fan_segment_id      uuid not null,
    fan_profile_id      uuid not null,
    created_at          timestamptz not null default now(),    -- joined the segment
    updated_at          timestamptz not null default now(),    -- last confirmed by an evaluation
    primary key (user_id, fan_segment_id, fan_profile_id),
    foreign key (user_id, fan_segment_id) references fan_segments (user_id, id) on delete cascade,
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade
);

comment on table fan_segment_members is
    'Materialized segment membership written by the segment evaluation job; drives broadcasts.';

create index fan_segment_members_fan_idx on fan_segment_members (user_id, fan_profile_id);

create trigger fan_segment_members_touch_updated_at
    before update on fan_segment_members
    for each row execute function touch_updated_at();

alter table fan_segment_members enable row level security;
alter table fan_segment_members force row level security;
create policy tenant_isolation on fan_segment_members
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_segment_members to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_custom_requests: bespoke paid content requests (replaces the undefined content_requests).
-- ---------------------------------------------------------------------------------------------
create table fan_custom_requests (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    fan_profile_id          uuid not null,
    fan_platform_account_id uuid,
    source_message_id       uuid,
    title                   text,
    description             text not null check (description <> ''),
    negotiation_stage       text not null default 'submitted'
                            check (negotiation_stage in ('submitted', 'negotiating', 'agreed',
                                   'declined', 'withdrawn')),
    requested_price         numeric(12, 2) check (requested_price >= 0),
    offered_price           numeric(12, 2) check (offered_price >= 0),
    agreed_price            numeric(12, 2) check (agreed_price >= 0),
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    fulfillment_status      text not null default 'not_started'
                            check (fulfillment_status in ('not_started', 'in_progress', 'delivered',
                                   'accepted', 'disputed', 'cancelled')),
    due_at                  timestamptz,
    delivered_at            timestamptz,
    deliverable_media_asset_ids uuid[] not null default '{}',
    payout_status           text not null default 'unpaid'
                            check (payout_status in ('unpaid', 'pending', 'paid', 'refunded')),
    payout_amount           numeric(12, 2) check (payout_amount >= 0),
    paid_at                 timestamptz,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    check (negotiation_stage <> 'agreed' or agreed_price is not null),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, fan_platform_account_id)
        references fan_platform_accounts (user_id, id) on delete set null (fan_platform_account_id),
    foreign key (user_id, source_message_id)
        references fan_messages (user_id, id) on delete set null (source_message_id),
    unique (user_id, id)
);

comment on table fan_custom_requests is
    'Bespoke paid content requests from fans: negotiation stage, agreed price, fulfillment '
    'status, payout. Supersedes the never-defined content_requests.';

create index fan_custom_requests_fan_idx on fan_custom_requests (user_id, fan_profile_id);
create index fan_custom_requests_open_idx on fan_custom_requests (user_id, due_at)
    where fulfillment_status in ('not_started', 'in_progress');

create trigger fan_custom_requests_touch_updated_at
    before update on fan_custom_requests
    for each row execute function touch_updated_at();

alter table fan_custom_requests enable row level security;
alter table fan_custom_requests force row level security;
create policy tenant_isolation on fan_custom_requests
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_custom_requests to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_transactions: purchase history per fan (PPV, tips, paid DMs, custom requests, bundles).
-- Mutable only for status (pending -> completed -> refunded/chargeback); upsert on the
-- platform's transaction id.
-- ---------------------------------------------------------------------------------------------
create table fan_transactions (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    fan_profile_id          uuid not null,
    fan_platform_account_id uuid,
    platform                text not null check (platform <> ''),
    kind                    text not null
                            check (kind in ('subscription', 'ppv', 'tip', 'paid_message',
                                   'custom_request', 'bundle', 'other')),
    status                  text not null default 'completed'
                            check (status in ('pending', 'completed', 'refunded', 'chargeback',
                                   'failed')),
    amount                  numeric(12, 2) not null check (amount >= 0),
    fee_amount              numeric(12, 2) check (fee_amount >= 0),
    net_amount              numeric(12, 2),
    currency                char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    occurred_at             timestamptz not null,
    external_transaction_id text,
    content_post_id         uuid,
    media_collection_id     uuid,
    fan_message_id          uuid,
    fan_custom_request_id   uuid,
    campaign_id             uuid,            -- attribution
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    foreign key (user_id, fan_platform_account_id)
        references fan_platform_accounts (user_id, id) on delete set null (fan_platform_account_id),
    foreign key (user_id, content_post_id)
        references content_posts (user_id, id) on delete set null (content_post_id),
    foreign key (user_id, media_collection_id)
        references media_collections (user_id, id) on delete set null (media_collection_id),
    foreign key (user_id, fan_message_id)
        references fan_messages (user_id, id) on delete set null (fan_message_id),
    foreign key (user_id, fan_custom_request_id)
        references fan_custom_requests (user_id, id) on delete set null (fan_custom_request_id),
    foreign key (user_id, campaign_id)
        references campaigns (user_id, id) on delete set null (campaign_id),
    unique (user_id, platform, external_transaction_id),
    unique (user_id, id)
);

comment on table fan_transactions is
    'Purchase history per fan: PPV, tips, paid DMs, custom requests, bundles; links to what was '
    'bought and campaign attribution.';

create index fan_transactions_fan_idx on fan_transactions (user_id, fan_profile_id, occurred_at desc);
create index fan_transactions_time_idx on fan_transactions (user_id, occurred_at desc);
create index fan_transactions_campaign_idx on fan_transactions (user_id, campaign_id, occurred_at)
    where campaign_id is not null;

create trigger fan_transactions_touch_updated_at
    before update on fan_transactions
    for each row execute function touch_updated_at();

alter table fan_transactions enable row level security;
alter table fan_transactions force row level security;
create policy tenant_isolation on fan_transactions
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_transactions to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_tag_values: creator-defined tags per fan (optionally valued: tag "city" = "Berlin").
-- ---------------------------------------------------------------------------------------------
create table fan_tag_values (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    fan_profile_id      uuid not null,
    tag                 text not null check (tag <> ''),
    value               text,
    source              text not null default 'creator'
                        check (source in ('creator', 'ai', 'automation', 'import')),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade,
    unique (user_id, fan_profile_id, tag)
);

comment on table fan_tag_values is
    'Tag assignments per fan (one value per tag per fan) for automation targeting and manual '
    'segmentation.';

create index fan_tag_values_tag_idx on fan_tag_values (user_id, tag, value);

create trigger fan_tag_values_touch_updated_at
    before update on fan_tag_values
    for each row execute function touch_updated_at();

alter table fan_tag_values enable row level security;
alter table fan_tag_values force row level security;
create policy tenant_isolation on fan_tag_values
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_tag_values to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_import_runs (Sprint 12 gap): audit record of one bulk fan import. Counters are updated
-- while the run progresses; rows are never reused for another run.
-- ---------------------------------------------------------------------------------------------
create table fan_import_runs (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    source              text not null default 'csv'
                        check (source in ('csv', 'platform_export', 'api', 'manual')),
    platform            text,
    file_name           text,
    rejects_path        text,            -- where rejected rows (with reasons) were written
    status              text not null default 'pending'
                        check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
    rows_read           integer not null default 0 check (rows_read >= 0),
    rows_inserted       integer not null default 0 check (rows_inserted >= 0),
    rows_updated        integer not null default 0 check (rows_updated >= 0),
    rows_duplicate      integer not null default 0 check (rows_duplicate >= 0),
    rows_rejected       integer not null default 0 check (rows_rejected >= 0),
    error_message       text,
    media_job_id        uuid,            -- the job that ran the import
    started_at          timestamptz,
    finished_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (rows_inserted + rows_updated + rows_duplicate + rows_rejected <= rows_read),
    check (finished_at is null or started_at is null or finished_at >= started_at),
    foreign key (user_id, media_job_id)
        references media_jobs (user_id, id) on delete set null (media_job_id)
);

comment on table fan_import_runs is
    'Audit log of bulk fan imports: source file, status, rows read/inserted/updated/duplicate/'
    'rejected, rejects file, start/finish. Sprint 12.';

create index fan_import_runs_user_idx on fan_import_runs (user_id, created_at desc);

create trigger fan_import_runs_touch_updated_at
    before update on fan_import_runs
    for each row execute function touch_updated_at();

alter table fan_import_runs enable row level security;
alter table fan_import_runs force row level security;
create policy tenant_isolation on fan_import_runs
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on fan_import_runs to geniehelper_app;
