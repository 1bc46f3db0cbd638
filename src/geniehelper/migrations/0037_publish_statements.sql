-- publish_post's two database steps, each one statement that fences itself: act for the creator and
-- check the attempt still owns its job record (begin_job_tx; p_job_id NULL: unfenced), then the step.
-- Run outside a transaction block, the statement is its own transaction and the creator setting
-- ends with it: one round trip where BEGIN, the fence, the step's statements and COMMIT took 4-5
-- (measured by `bench publishing`: round trips were the job system's main cost per post).

-- Step one: lock and read the post (with its content and its platform connection), then start this
-- attempt: the post set `publishing` and its attempt row written, or counted again when an earlier
-- run of this revision wrote it. Nothing is started when the post is gone, is of another revision, is
-- not claimed for publishing ('queued' or 'publishing'), or is overdue by more than
-- p_max_lateness_s with no earlier attempt to verify (the job marks it missed). Returns whether the
-- attempt owns its job, the post (jsonb; NULL: no such post) and the attempt (jsonb; NULL: none started).
create function publish_post_start(
    p_user_id uuid, p_job_id uuid, p_attempt integer, p_post_id uuid, p_revision integer, p_max_lateness_s float8
) returns table (owns boolean, post jsonb, attempt jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_post jsonb;
    v_attempt jsonb;
begin
    if p_job_id is null then
        perform set_config('app.user_id', p_user_id::text, true);
    elsif not begin_job_tx(p_user_id, p_job_id, p_attempt) then
        return query select false, null::jsonb, null::jsonb;
        return;
    end if;
    select to_jsonb(loaded) into v_post
      from (select sp.id, sp.user_id, sp.content_post_id, sp.platform_connection_id, sp.platform, sp.scheduled_time,
                   sp.status, sp.revision, sp.external_post_id, cp.caption, cp.hashtags, cp.title,
                   extract(epoch from now() - sp.scheduled_time)::float8 as lateness_s,
                   case when pc.id is not null then to_jsonb(pc) end as connection
              from scheduled_posts sp
              join content_posts cp on cp.user_id = sp.user_id and cp.id = sp.content_post_id
              left join platform_connections pc on pc.user_id = sp.user_id and pc.id = sp.platform_connection_id
             where sp.id = p_post_id
               for update of sp) loaded;
    if v_post is null or (v_post ->> 'revision')::integer <> p_revision
       or v_post ->> 'status' not in ('queued', 'publishing')
       or ((v_post ->> 'lateness_s')::float8 > p_max_lateness_s
           and not exists (select from publish_attempts a
                            where a.user_id = p_user_id and a.scheduled_post_id = p_post_id
                              and a.platform = v_post ->> 'platform' and a.revision = p_revision)) then
        return query select true, v_post, null::jsonb;
        return;
    end if;
    -- The idempotency key is derived from what is published, so every retry and worker sends the same.
    with started as (
        update scheduled_posts
           set status = 'publishing', publishing_started_at = now(), attempts = attempts + 1, error_message = null
         where id = p_post_id and revision = p_revision and status in ('queued', 'publishing')
        returning id, platform
    )
    insert into publish_attempts (user_id, scheduled_post_id, platform, revision, idempotency_key)
    select p_user_id, started.id, started.platform, p_revision,
           format('gh-%s-%s-r%s', started.id, started.platform, p_revision)
      from started
    on conflict (user_id, scheduled_post_id, platform, revision) do update
        set attempts = publish_attempts.attempts + 1
    returning jsonb_build_object('id', id, 'idempotency_key', idempotency_key, 'attempts', attempts,
                                 'external_post_id', external_post_id, 'created', xmax = 0)
      into v_attempt;
    return query select true, v_post, v_attempt;
end;
$$;
grant execute on function publish_post_start(uuid, uuid, integer, uuid, integer, float8) to geniehelper_app;

-- Step two, a published post: its attempt confirmed (p_attempt_id NULL: an earlier attempt's id was
-- already confirmed), the scheduled post `posted` (its revision only), the content piece `published`
-- (p_created_at: when the platform says it was created; NULL: unknown). The content post's
-- attachments (media_asset_ids, in order; ids that are not the creator's assets skipped, as the
-- array has no FK) are recorded as used by it in media_asset_usages (a second platform's post
-- changes nothing). Returns whether the attempt owned its job (false: nothing written).
create function publish_post_record_posted(
    p_user_id uuid, p_job_id uuid, p_attempt integer, p_attempt_id uuid, p_external_id text, p_external_url text,
    p_post_id uuid, p_posted_at timestamptz, p_revision integer, p_content_post_id uuid, p_created_at timestamptz
) returns table (owns boolean)
language plpgsql as $$
#variable_conflict use_column
begin
    if p_job_id is null then
        perform set_config('app.user_id', p_user_id::text, true);
    elsif not begin_job_tx(p_user_id, p_job_id, p_attempt) then
        return query select false;
        return;
    end if;
    with confirmed as (
        update publish_attempts set external_post_id = p_external_id, external_post_url = p_external_url,
                                    confirmed_at = now()
         where id = p_attempt_id
    ), posted as (
        update scheduled_posts
           set status = 'posted', external_post_id = p_external_id, external_post_url = p_external_url,
               posted_at = p_posted_at, error_message = null
         where id = p_post_id and revision = p_revision
    ), used as (
        insert into media_asset_usages (user_id, media_asset_id, content_post_id, position)
        select cp.user_id, attached.id, cp.id, min(attached.ord) - 1
          from content_posts cp, unnest(cp.media_asset_ids) with ordinality as attached (id, ord)
         where cp.id = p_content_post_id
           and exists (select from media_assets a where a.user_id = cp.user_id and a.id = attached.id)
         group by cp.user_id, attached.id, cp.id
        on conflict (user_id, media_asset_id, content_post_id, campaign_id, media_collection_id, fan_profile_id)
           do update set position = excluded.position
    )
    update content_posts set status = 'published', published_at = coalesce(published_at, p_created_at)
     where id = p_content_post_id and status <> 'archived';
    return query select true;
end;
$$;
grant execute on function publish_post_record_posted(uuid, uuid, integer, uuid, text, text, uuid, timestamptz, integer,
                                                     uuid, timestamptz) to geniehelper_app;
