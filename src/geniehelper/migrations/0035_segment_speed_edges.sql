-- 0035 segments and scores at scale, second pass (issue #22, bench/README.md "segments").
--
-- The window edge of a last_activity rule: an incremental refresh looks up the fans whose
-- greatest(last_seen_at, last_message_at, last_purchase_at) lies between its last evaluation's now()
-- and this one's, less N days (geniehelper.segments.compiler, LAST_ACTIVITY: the same expression);
-- without this index that was a pass over every profile of the creator, per refresh.
create index fan_profiles_last_activity_idx
    on fan_profiles (user_id, (greatest(last_seen_at, last_message_at, last_purchase_at)));

-- The profile-update log trigger (0030) joined its old and new transition tables. A trigger
-- function's statement without parameters keeps the plan made at its first call in a session,
-- with that call's row counts: after a few one-row updates the join stayed a nested loop, and one
-- statement updating 20,000 profiles then took 50 s instead of 0.5 s (quadratic; measured by hand on
-- bench segments data, 2026-12-04; a test cannot time it). The same test as a set difference:
-- the rule-read columns of the new rows not among the old rows' (a hashed or sorted pass whatever
-- plan was cached, never a join per row: 0.45 s for those 20,000 after the same one-row updates).
-- As before, an update of an unread column logs nothing
-- (test_the_profile_log_trigger_after_small_updates_logs_exactly_the_changed_fans).
create or replace function log_fan_profile_update() returns trigger language plpgsql as $$
begin
    insert into fan_segment_input_changes (user_id, fan_profile_id, source)
    select c.user_id, c.id, 'profile'
      from (select n.id, n.user_id, n.status, n.lifecycle_stage, n.lifetime_spend, n.message_count,
                   n.engagement_score, n.currency, n.display_name, n.first_seen_at, n.last_seen_at,
                   n.last_message_at, n.last_purchase_at
              from new_rows n
            except
            select o.id, o.user_id, o.status, o.lifecycle_stage, o.lifetime_spend, o.message_count,
                   o.engagement_score, o.currency, o.display_name, o.first_seen_at, o.last_seen_at,
                   o.last_message_at, o.last_purchase_at
              from old_rows o) c;
    return null;
end
$$;
