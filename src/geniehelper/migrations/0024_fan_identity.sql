-- 0024 fan identity: the platforms a person is seen on, kept on the profile beside lifetime spend and
-- last activity, so a profile's composite figures cover all the accounts joined under it
-- (geniehelper.domain.fan_identity keeps them when accounts are linked or unlinked).

alter table fan_profiles add column platforms text[] not null default '{}';

comment on column fan_profiles.platforms is
    'Distinct platforms of the profile''s fan_platform_accounts (sorted).';

update fan_profiles f
   set platforms = s.platforms
  from (select user_id, fan_profile_id, array_agg(distinct platform order by platform) as platforms
          from fan_platform_accounts group by 1, 2) s
 where f.user_id = s.user_id and f.id = s.fan_profile_id;
