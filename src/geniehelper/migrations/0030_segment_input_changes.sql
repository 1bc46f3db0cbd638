-- 0030 incremental segment refresh (docs/segments.md, "Incremental refresh"): a change log of the
-- fans whose rule inputs were written, kept by statement-level triggers on every table a rule reads.
--
-- A refresh after the first re-evaluates only the fans logged here by a transaction its last
-- evaluation may not have seen (xact_id at or above that evaluation's snapshot xmin, as for
-- domain_events in 0026), plus the fans whose timestamps crossed one of its rule's time-window edges.
-- Unlike a row's xmin, the log also records deletions (a tag removed, a transaction purged) and a
-- fan moved between profiles (both fans). One row per fan per statement per source: `source` names
-- the table, so a refresh reads only the entries of the tables its rule reads.

create table fan_segment_input_changes (
    id              bigint generated always as identity primary key,
    user_id         uuid not null,   -- no foreign keys: a deleted fan (or creator) must still be logged
    fan_profile_id  uuid not null,
    source          text not null check (source in ('profile', 'transaction', 'subscription',
                                                     'subscription_event', 'account', 'message', 'tag', 'score')),
    xact_id         xid8 not null default pg_current_xact_id(),
    changed_at      timestamptz not null default now()
);

comment on table fan_segment_input_changes is
    'Fans whose segment-rule inputs changed, by writing transaction (xact_id) and source table; written by '
    'triggers, read by incremental segment refreshes, pruned below the oldest evaluation that needs it.';

create index fan_segment_input_changes_xact_idx on fan_segment_input_changes (user_id, xact_id)
    include (source, fan_profile_id);

alter table fan_segment_input_changes enable row level security;
alter table fan_segment_input_changes force row level security;
create policy tenant_isolation on fan_segment_input_changes
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, delete on fan_segment_input_changes to geniehelper_app;

-- Tables with a fan_profile_id column: every fan of the rows a statement inserted, updated (old and new
-- fan) or deleted. TG_ARGV[0]: the source.
create function log_fan_input_insert() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select distinct n.user_id, n.fan_profile_id, tg_argv[0] from new_rows n where n.fan_profile_id is not null;
    return null;
end
$$;

create function log_fan_input_update() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select user_id, fan_profile_id, tg_argv[0]
      from (select o.user_id, o.fan_profile_id from old_rows o
            union
            select n.user_id, n.fan_profile_id from new_rows n) c
     where fan_profile_id is not null;
    return null;
end
$$;

create function log_fan_input_delete() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select distinct o.user_id, o.fan_profile_id, tg_argv[0] from old_rows o where o.fan_profile_id is not null;
    return null;
end
$$;

create trigger log_segment_inputs_insert after insert on fan_transactions
    referencing new table as new_rows for each statement execute function log_fan_input_insert('transaction');
create trigger log_segment_inputs_update after update on fan_transactions
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('transaction');
create trigger log_segment_inputs_delete after delete on fan_transactions
    referencing old table as old_rows for each statement execute function log_fan_input_delete('transaction');

create trigger log_segment_inputs_insert after insert on fan_subscriptions
    referencing new table as new_rows for each statement execute function log_fan_input_insert('subscription');
create trigger log_segment_inputs_update after update on fan_subscriptions
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('subscription');
create trigger log_segment_inputs_delete after delete on fan_subscriptions
    referencing old table as old_rows for each statement execute function log_fan_input_delete('subscription');

create trigger log_segment_inputs_insert after insert on fan_platform_accounts
    referencing new table as new_rows for each statement execute function log_fan_input_insert('account');
create trigger log_segment_inputs_update after update on fan_platform_accounts
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('account');
create trigger log_segment_inputs_delete after delete on fan_platform_accounts
    referencing old table as old_rows for each statement execute function log_fan_input_delete('account');

create trigger log_segment_inputs_insert after insert on fan_messages
    referencing new table as new_rows for each statement execute function log_fan_input_insert('message');
create trigger log_segment_inputs_update after update on fan_messages
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('message');
create trigger log_segment_inputs_delete after delete on fan_messages
    referencing old table as old_rows for each statement execute function log_fan_input_delete('message');

create trigger log_segment_inputs_insert after insert on fan_tag_values
    referencing new table as new_rows for each statement execute function log_fan_input_insert('tag');
create trigger log_segment_inputs_update after update on fan_tag_values
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('tag');
create trigger log_segment_inputs_delete after delete on fan_tag_values
    referencing old table as old_rows for each statement execute function log_fan_input_delete('tag');

create trigger log_segment_inputs_insert after insert on fan_scores
    referencing new table as new_rows for each statement execute function log_fan_input_insert('score');
create trigger log_segment_inputs_update after update on fan_scores
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_input_update('score');
create trigger log_segment_inputs_delete after delete on fan_scores
    referencing old table as old_rows for each statement execute function log_fan_input_delete('score');

-- Subscription events (append-only) name the platform account: its fan.
create function log_fan_subscription_event_insert() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select distinct a.user_id, a.fan_profile_id, 'subscription_event'
      from new_rows n
      join fan_platform_accounts a on a.user_id = n.user_id and a.id = n.fan_platform_account_id
     where a.fan_profile_id is not null;
    return null;
end
$$;

create trigger log_segment_inputs_insert after insert on fan_subscription_events
    referencing new table as new_rows for each statement execute function log_fan_subscription_event_insert();

-- Profiles: every inserted or deleted one; an update only when a column a rule reads changed (so
-- touching updated_at, or score_fans confirming unchanged figures, logs nothing).
create function log_fan_profile_insert() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select n.user_id, n.id, 'profile' from new_rows n;
    return null;
end
$$;

create function log_fan_profile_update() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select n.user_id, n.id, 'profile'
      from new_rows n join old_rows o on o.id = n.id
     where (o.user_id, o.status, o.lifecycle_stage, o.lifetime_spend, o.message_count, o.engagement_score,
            o.currency, o.display_name, o.first_seen_at, o.last_seen_at, o.last_message_at, o.last_purchase_at)
           is distinct from
           (n.user_id, n.status, n.lifecycle_stage, n.lifetime_spend, n.message_count, n.engagement_score,
            n.currency, n.display_name, n.first_seen_at, n.last_seen_at, n.last_message_at, n.last_purchase_at);
    return null;
end
$$;

create function log_fan_profile_delete() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select o.user_id, o.id, 'profile' from old_rows o;
    return null;
end
$$;

create trigger log_segment_inputs_insert after insert on fan_profiles
    referencing new table as new_rows for each statement execute function log_fan_profile_insert();
create trigger log_segment_inputs_update after update on fan_profiles
    referencing old table as old_rows new table as new_rows
    for each statement execute function log_fan_profile_update();
create trigger log_segment_inputs_delete after delete on fan_profiles
    referencing old table as old_rows for each statement execute function log_fan_profile_delete();

-- The time-window edges a refresh reads: messages by their effective time (the rule's expression).
create index fan_messages_effective_time_idx on fan_messages (user_id, (coalesce(occurred_at, created_at)))
    include (fan_profile_id);

-- score_fans at scale (docs/scoring.md, "At scale"). Its upsert writes every fan's row: the
-- (user_id, fan_profile_id) -> fan_profiles key already ties a score to its creator (a profile's
-- user_id references creators, on delete cascade), so the direct user_id -> creators key only added
-- a second foreign-key check per inserted row (1.2 s per 100,000 rows measured). The two indexes on
-- columns every rescoring changes (churn_risk, computed_at) had no reader and made each update a
-- non-HOT one with two more index entries; rules read scores by (user_id, fan_profile_id).
alter table fan_scores drop constraint fan_scores_user_id_fkey;
drop index fan_scores_churn_idx;
drop index fan_scores_computed_idx;

-- The rules version of each segment the last evaluation inlined (its references'): a refresh whose
-- inlined rules differ is a full one. Versions, not times: a rules change committed after the
-- evaluation began may carry an earlier rules_changed_at than it.
alter table fan_segments add column evaluated_references jsonb;

comment on column fan_segments.evaluated_references is
    'The rules_version of each segment (by id) whose rules the last evaluation inlined through references.';
