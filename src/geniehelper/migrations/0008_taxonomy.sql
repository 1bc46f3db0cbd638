-- 0008 taxonomy
--
-- taxonomy_mappings: the single mapping table (the duplicate "taxonomy_mapping" is not created).
-- A creator-owned assignment of one entity (content idea, content post or media asset) to a
-- taxonomy term, identified by its slash-separated path ('fitness/yoga/morning'). The term
-- vocabulary itself is not stored here.

create table taxonomy_mappings (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    content_idea_id     uuid,
    content_post_id     uuid,
    media_asset_id      uuid,
    entity_type         text generated always as (
                            case
                                when content_idea_id is not null then 'content_idea'
                                when content_post_id is not null then 'content_post'
                                else 'media_asset'
                            end
                        ) stored,
    term_path           text not null check (term_path ~ '^[^/]+(/[^/]+)*$'),
    source              text not null check (source in ('ai', 'creator')),
    confidence          numeric(4, 3) check (confidence between 0 and 1),
    model               text,            -- the model that proposed it, for source = 'ai'
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (num_nonnulls(content_idea_id, content_post_id, media_asset_id) = 1),
    foreign key (user_id, content_idea_id)
        references content_ideas (user_id, id) on delete cascade,
    foreign key (user_id, content_post_id)
        references content_posts (user_id, id) on delete cascade,
    foreign key (user_id, media_asset_id)
        references media_assets (user_id, id) on delete cascade,
    unique nulls not distinct (user_id, content_idea_id, content_post_id, media_asset_id, term_path)
);

comment on table taxonomy_mappings is
    'Taxonomy term assignments (term_path) for a content idea, content post or media asset (exactly '
    'one), by AI (with confidence) or the creator.';

-- "everything tagged under fitness/..." (prefix match) per creator
create index taxonomy_mappings_term_idx on taxonomy_mappings (user_id, term_path text_pattern_ops);
create index taxonomy_mappings_post_idx on taxonomy_mappings (user_id, content_post_id)
    where content_post_id is not null;
create index taxonomy_mappings_asset_idx on taxonomy_mappings (user_id, media_asset_id)
    where media_asset_id is not null;

create trigger taxonomy_mappings_touch_updated_at
    before update on taxonomy_mappings
    for each row execute function touch_updated_at();

alter table taxonomy_mappings enable row level security;
alter table taxonomy_mappings force row level security;
create policy tenant_isolation on taxonomy_mappings
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update, delete on taxonomy_mappings to geniehelper_app;
