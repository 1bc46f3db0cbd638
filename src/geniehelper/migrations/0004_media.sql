-- 0004 media
--
-- media_assets (canonical; scraped_media does not exist), media_presets, media_collections,
-- media_asset_usages, media_jobs (the record of EVERY job the runtime runs, on every queue).

-- ---------------------------------------------------------------------------------------------
-- media_assets: the single source of truth for media, uploaded, scraped or generated.
-- ---------------------------------------------------------------------------------------------
create table media_assets (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    kind                    text not null
                            check (kind in ('image', 'video', 'audio', 'document', 'other')),
    status                  text not null default 'ready'
                            check (status in ('pending', 'processing', 'ready', 'failed')),
    storage_key             text not null check (storage_key <> ''),  -- where the bytes are
    original_filename       text,
    mime_type               text,
    byte_size               bigint check (byte_size >= 0),
    checksum_sha256         text check (checksum_sha256 ~ '^[0-9a-f]{64}$'),
    width                   integer check (width > 0),
    height                  integer check (height > 0),
    duration_ms             integer check (duration_ms >= 0),
    source                  text not null default 'upload'
                            check (source in ('upload', 'scrape', 'generated', 'import')),
    source_platform         text,
    source_external_id      text,       -- the platform's media id for scraped assets
    derived_from_asset_id   uuid,       -- input asset of the job that produced this one
    produced_by_job_id      uuid,       -- media_jobs row that produced it (FK added below)
    transcription_text      text,
    ai_description          text,
    ai_description_model    text,
    tags                    text[] not null default '{}',
    metadata                jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    check (derived_from_asset_id <> id),
    foreign key (user_id, derived_from_asset_id)
        references media_assets (user_id, id) on delete set null (derived_from_asset_id),
    unique (user_id, storage_key),
    -- a scraped item is stored once per creator
    unique (user_id, source_platform, source_external_id),
    unique (user_id, id)
);

comment on table media_assets is
    'Canonical asset record for every piece of media (uploaded, scraped, generated): storage key, '
    'technical metadata, transcription_text, ai_description. Replaces the dropped scraped_media.';

create index media_assets_user_created_idx on media_assets (user_id, created_at desc);
create index media_assets_checksum_idx on media_assets (user_id, checksum_sha256)
    where checksum_sha256 is not null;
create index media_assets_derived_idx on media_assets (user_id, derived_from_asset_id)
    where derived_from_asset_id is not null;

create trigger media_assets_touch_updated_at
    before update on media_assets
    for each row execute function touch_updated_at();

alter table media_assets enable row level security;
alter table media_assets force row level security;
create policy tenant_isolation on media_assets
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on media_assets to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- media_presets: named processing presets referenced by media jobs (by id in the job payload).
-- ---------------------------------------------------------------------------------------------
create table media_presets (
    id                      uuid primary key default gen_random_uuid(),
    user_id                 uuid not null references creators (id) on delete cascade,
    name                    text not null check (name <> ''),
    watermark               jsonb not null default '{}' check (jsonb_typeof(watermark) = 'object'),
    output_format           text,
    output_width            integer check (output_width > 0),
    output_height           integer check (output_height > 0),
    clip_duration_ms        integer check (clip_duration_ms > 0),
    strip_metadata_fields   text[] not null default '{}',
    is_default              boolean not null default false,
    created_at              timestamptz not null default now(),
    updated_at              timestamptz not null default now(),
    unique (user_id, name),
    unique (user_id, id)
);

comment on table media_presets is
    'Named processing presets: watermark style (jsonb), output resolution/format, clip duration, '
    'metadata fields to strip.';

-- at most one default preset per creator
create unique index media_presets_one_default_key on media_presets (user_id) where is_default;

create trigger media_presets_touch_updated_at
    before update on media_presets
    for each row execute function touch_updated_at();

alter table media_presets enable row level security;
alter table media_presets force row level security;
create policy tenant_isolation on media_presets
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on media_presets to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- media_collections: PPV bundles, themed drops, exclusive packs. Members: media_asset_usages.
-- ---------------------------------------------------------------------------------------------
create table media_collections (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    name                text not null check (name <> ''),
    description         text,
    kind                text not null default 'ppv_bundle'
                        check (kind in ('ppv_bundle', 'themed_drop', 'exclusive_pack')),
    price               numeric(12, 2) check (price >= 0),
    currency            char(3) not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    access_tier         text,       -- fan-facing tier required, if any
    status              text not null default 'draft'
                        check (status in ('draft', 'active', 'archived')),
    cover_asset_id      uuid,
    released_at         timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, cover_asset_id)
        references media_assets (user_id, id) on delete set null (cover_asset_id),
    unique (user_id, id)
);

comment on table media_collections is
    'Asset groupings sold or released together (PPV bundle, themed drop, exclusive pack) with a '
    'price point and access tier.';

create index media_collections_user_idx on media_collections (user_id, status);

create trigger media_collections_touch_updated_at
    before update on media_collections
    for each row execute function touch_updated_at();

alter table media_collections enable row level security;
alter table media_collections force row level security;
create policy tenant_isolation on media_collections
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on media_collections to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- media_asset_usages: where each asset is used: exactly one of post, campaign, collection.
-- ---------------------------------------------------------------------------------------------
create table media_asset_usages (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    media_asset_id      uuid not null,
    content_post_id     uuid,
    campaign_id         uuid,
    media_collection_id uuid,
    position            integer check (position >= 0),   -- order within the target, if any
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (num_nonnulls(content_post_id, campaign_id, media_collection_id) = 1),
    foreign key (user_id, media_asset_id)
        references media_assets (user_id, id) on delete cascade,
    foreign key (user_id, content_post_id)
        references content_posts (user_id, id) on delete cascade,
    foreign key (user_id, campaign_id)
        references campaigns (user_id, id) on delete cascade,
    foreign key (user_id, media_collection_id)
        references media_collections (user_id, id) on delete cascade,
    unique nulls not distinct (user_id, media_asset_id, content_post_id, campaign_id, media_collection_id)
);

comment on table media_asset_usages is
    'Asset usage links: one row per asset per post, campaign or collection (exactly one target).';

create index media_asset_usages_post_idx on media_asset_usages (user_id, content_post_id)
    where content_post_id is not null;
create index media_asset_usages_campaign_idx on media_asset_usages (user_id, campaign_id)
    where campaign_id is not null;
create index media_asset_usages_collection_idx on media_asset_usages (user_id, media_collection_id, position)
    where media_collection_id is not null;

create trigger media_asset_usages_touch_updated_at
    before update on media_asset_usages
    for each row execute function touch_updated_at();

alter table media_asset_usages enable row level security;
alter table media_asset_usages force row level security;
create policy tenant_isolation on media_asset_usages
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on media_asset_usages to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- media_jobs: the durable record of EVERY job the runtime runs, on every queue (the seed's
-- "BullMQ job records"; the name is kept). Written before the job is pushed to Redis (outbox:
-- enqueued_at NULL until the relay pushes it); updated by the worker on start, heartbeat,
-- progress, completion, failure. job_key is the logical dedup key (e.g. publish_post:<id>:<rev>).
-- ---------------------------------------------------------------------------------------------
create table media_jobs (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    job_name            text not null check (job_name <> ''),
    queue               text not null check (queue <> ''),
    job_key             text not null check (job_key <> ''),
    status              text not null default 'queued'
                        check (status in ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    payload             jsonb not null,
    priority            integer not null default 10,     -- lower runs first; retries use 5
    attempts            integer not null default 0 check (attempts >= 0),   -- attempts started
    max_attempts        integer not null default 5 check (max_attempts >= 1),
    progress            smallint not null default 0 check (progress between 0 and 100),
    result              jsonb,
    error               text,
    error_kind          text,
    run_at              timestamptz not null default now(),   -- earliest start
    enqueued_at         timestamptz,     -- pushed to the Redis queue; NULL = still in the outbox
    started_at          timestamptz,
    heartbeat_at        timestamptz,
    finished_at         timestamptz,
    worker_id           text,
    media_asset_id      uuid,            -- input asset, for media jobs
    scheduled_post_id   uuid,            -- for publish_post
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    foreign key (user_id, media_asset_id)
        references media_assets (user_id, id) on delete set null (media_asset_id),
    foreign key (user_id, scheduled_post_id)
        references scheduled_posts (user_id, id) on delete set null (scheduled_post_id),
    unique (user_id, job_key),
    unique (user_id, id)
);

comment on table media_jobs is
    'Record of every job run by the runtime, all queues (not only media): payload, status, '
    'attempts, progress, result/error, outbox (enqueued_at) and heartbeat timestamps. '
    'unique (user_id, job_key) makes enqueueing idempotent.';

-- outbox relay: rows written but not yet pushed to Redis
create index media_jobs_outbox_idx on media_jobs (created_at)
    where enqueued_at is null and status = 'queued';
-- job_monitor stall scan
create index media_jobs_stall_idx on media_jobs (status, heartbeat_at)
    where status = 'processing';
-- a creator's jobs, newest first
create index media_jobs_user_created_idx on media_jobs (user_id, created_at desc);
-- queue statistics over live jobs
create index media_jobs_live_queue_idx on media_jobs (queue, status)
    where status in ('queued', 'processing');
create index media_jobs_asset_idx on media_jobs (user_id, media_asset_id)
    where media_asset_id is not null;
create index media_jobs_scheduled_post_idx on media_jobs (user_id, scheduled_post_id)
    where scheduled_post_id is not null;

create trigger media_jobs_touch_updated_at
    before update on media_jobs
    for each row execute function touch_updated_at();

alter table media_jobs enable row level security;
alter table media_jobs force row level security;
create policy tenant_isolation on media_jobs
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on media_jobs
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update, delete on media_jobs to geniehelper_app;
grant select, update on media_jobs to geniehelper_system;

-- Assets produced by a job point back at it (the job row may be pruned: set null).
alter table media_assets
    add foreign key (user_id, produced_by_job_id)
        references media_jobs (user_id, id) on delete set null (produced_by_job_id);

create index media_assets_produced_by_idx on media_assets (user_id, produced_by_job_id)
    where produced_by_job_id is not null;
