-- Publishing runtime: exactly-once publish attempts, and waking the post_scheduler early.

-- One row per (creator, scheduled post, platform, revision), written BEFORE the platform is called
-- (insert ... on conflict do nothing). A later attempt that finds the row knows an earlier one may
-- have reached the platform, and verifies by idempotency key before publishing again.
create table publish_attempts (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    scheduled_post_id   uuid not null,
    platform            text not null,
    revision            integer not null check (revision >= 1),
    idempotency_key     text not null check (idempotency_key <> ''),
    attempts            integer not null default 1 check (attempts >= 1),
    external_post_id    text,
    external_post_url   text,
    confirmed_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (user_id, scheduled_post_id, platform, revision),
    unique (user_id, idempotency_key),
    foreign key (user_id, scheduled_post_id) references scheduled_posts (user_id, id) on delete cascade
);
comment on table publish_attempts is
    'Publish attempts keyed on (creator, scheduled post, platform, revision): the idempotency record of publish_post.';

create trigger publish_attempts_touch_updated_at
    before update on publish_attempts
    for each row execute function touch_updated_at();

alter table publish_attempts enable row level security;
alter table publish_attempts force row level security;
create policy tenant_isolation on publish_attempts
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, update on publish_attempts to geniehelper_app;

-- The post_scheduler sleeps until the next due post; a post scheduled sooner wakes it.
create function notify_scheduled_post_due() returns trigger
language plpgsql as $$
begin
    perform pg_notify('geniehelper_scheduled_posts', extract(epoch from new.scheduled_time)::text);
    return null;
end;
$$;

create trigger scheduled_posts_notify_due
    after insert or update of scheduled_time, status on scheduled_posts
    for each row when (new.status = 'scheduled')
    execute function notify_scheduled_post_due();
