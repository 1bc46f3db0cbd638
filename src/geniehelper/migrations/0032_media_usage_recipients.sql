-- 0032 media_asset_usages name the fan a copy was made for
--
-- A fingerprinted copy (media_fingerprint, media_preset_apply with a fan_profile_id) is made for one
-- fan: its usage row names that fan (fan_profile_id), a fourth kind of target beside post, campaign
-- and collection (still exactly one per row; a copy that is also a bundle's member has two rows).
-- Rows stay creator-owned under the table's existing tenant_isolation policy (user_id).

alter table media_asset_usages add column fan_profile_id uuid;
alter table media_asset_usages
    add foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade;

alter table media_asset_usages drop constraint media_asset_usages_check;
alter table media_asset_usages
    add constraint media_asset_usages_one_target
    check (num_nonnulls(content_post_id, campaign_id, media_collection_id, fan_profile_id) = 1);

do $$
declare
    old_unique text;
begin
    select conname into strict old_unique from pg_constraint
     where conrelid = 'media_asset_usages'::regclass and contype = 'u';
    execute format('alter table media_asset_usages drop constraint %I', old_unique);
end
$$;
alter table media_asset_usages
    add constraint media_asset_usages_target_key unique nulls not distinct
    (user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id);

create index media_asset_usages_fan_idx on media_asset_usages (user_id, fan_profile_id)
    where fan_profile_id is not null;

comment on column media_asset_usages.fan_profile_id is
    'The fan a copy was made for (its invisible fingerprint names them), when that is the usage.';
