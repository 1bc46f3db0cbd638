-- Publishing revisions: the database bumps scheduled_posts.revision itself.
--
-- A scheduled post's revision names what is published (time, content, connection): the job key
-- `publish_post:<id>:r<revision>` and the idempotency key `gh-<id>-<platform>-r<revision>` are
-- derived from it, and a queued job whose revision is no longer current does nothing (superseded).
-- Until now the bump was a convention of whoever edited the row; these triggers make it a rule:
--
-- * scheduled_posts: changing scheduled_time, content_post_id or platform_connection_id sets
--   revision = old revision + 1 (whatever the UPDATE assigned), and is refused while the post is
--   'publishing' (its job has the old content in hand and may already have reached the platform).
-- * content_posts: changing caption, hashtags or title bumps the revision of that content's
--   scheduled posts in 'scheduled' or 'queued', and is refused while one of them is 'publishing'.
-- * A new revision of a post in 'queued' puts it back to 'scheduled' (and wakes the post_scheduler),
--   so the new revision is dispatched at its time; the job of the old revision finds itself
--   superseded.
--
-- Both functions run as the invoking role (no SECURITY DEFINER): the app role, acting for the
-- creator, may read, lock and update that creator's scheduled posts under RLS, and the statements
-- below only touch rows of new.user_id. The system role never changes these columns.

create function scheduled_posts_revise() returns trigger
language plpgsql as $$
begin
    if (new.scheduled_time, new.content_post_id, new.platform_connection_id)
       is distinct from (old.scheduled_time, old.content_post_id, old.platform_connection_id) then
        if old.status = 'publishing' then
            raise exception 'scheduled post % is being published: its scheduled_time, content_post_id and '
                            'platform_connection_id cannot change until the publish settles', old.id
                using errcode = 'object_in_use',
                      hint = 'retry once the post is posted, failed, or back in queued';
        end if;
        new.revision := old.revision + 1;
    end if;
    if new.revision <> old.revision and old.status = 'queued' and new.status = 'queued' then
        new.status := 'scheduled';
        -- Status set here is not in the UPDATE's SET list, so scheduled_posts_notify_due does not
        -- fire for it: wake the post_scheduler for the re-scheduled post ourselves (sent on commit).
        perform pg_notify('geniehelper_scheduled_posts', extract(epoch from new.scheduled_time)::text);
    end if;
    return new;
end;
$$;

comment on function scheduled_posts_revise() is
    'BEFORE UPDATE on scheduled_posts: a new time, content or connection is a new revision (refused '
    'while publishing); a queued post with a new revision goes back to scheduled.';

-- Column-specific: the claim and the MARK_* statements (status, timestamps, external ids) never
-- fire it; `revision` is listed so the bump made by content_posts_revise_scheduled() is seen.
create trigger scheduled_posts_revise
    before update of scheduled_time, content_post_id, platform_connection_id, revision on scheduled_posts
    for each row execute function scheduled_posts_revise();

create function content_posts_revise_scheduled() returns trigger
language plpgsql as $$
declare
    scheduled record;
begin
    -- Lock this content's unsettled scheduled posts first (in id order: no deadlock between two
    -- edits), so none can start publishing between the check and the bump. FOR UPDATE returns the
    -- latest committed version of each row, so a post that just started publishing is seen as such.
    for scheduled in
        select id, status from scheduled_posts
         where user_id = new.user_id and content_post_id = new.id
           and status in ('scheduled', 'queued', 'publishing')
         order by id
           for update
    loop
        if scheduled.status = 'publishing' then
            raise exception 'content post % is being published (scheduled post %): its caption, hashtags and '
                            'title cannot change until the publish settles', new.id, scheduled.id
                using errcode = 'object_in_use',
                      hint = 'retry once the post is posted, failed, or back in queued';
        end if;
    end loop;
    update scheduled_posts set revision = revision + 1
     where user_id = new.user_id and content_post_id = new.id and status in ('scheduled', 'queued');
    return null;
end;
$$;

comment on function content_posts_revise_scheduled() is
    'AFTER UPDATE of caption/hashtags/title on content_posts: bumps the revision of its scheduled or '
    'queued scheduled posts; refused while one of them is publishing.';

create trigger content_posts_revise_scheduled
    after update of caption, hashtags, title on content_posts
    for each row
    when (old.caption is distinct from new.caption
          or old.hashtags is distinct from new.hashtags
          or old.title is distinct from new.title)
    execute function content_posts_revise_scheduled();

comment on column scheduled_posts.revision is
    'What is published, numbered: bumped by the scheduled_posts_revise trigger when scheduled_time, '
    'content_post_id or platform_connection_id change, and by content_posts_revise_scheduled when the '
    'content''s caption, hashtags or title change (scheduled/queued posts). Job and idempotency keys '
    'derive from it.';
