-- 0021 segments: what the segment evaluator keeps on fan_segments (docs/segments.md)
--
-- rules_version counts the rule sets a segment has had: this trigger bumps it (and stamps
-- rules_changed_at) whenever `rules` is written with a different value, and nothing else may move
-- it. An evaluation records the version it evaluated (evaluated_rules_version, under the segment's
-- row lock), so a segment whose rules changed is due at once, whatever its last_evaluated_at says.
-- evaluation_claimed_at is the segment_evaluator's claim (the system role may write that column and
-- no other); the evaluation clears it. evaluation_error says why the last evaluation refused the
-- stored rules (NULL once an evaluation succeeds).

alter table fan_segments
    add column rules_version           integer not null default 0 check (rules_version >= 0),
    add column rules_changed_at        timestamptz,
    add column evaluated_rules_version integer,
    add column evaluation_claimed_at   timestamptz,
    add column evaluation_error        text;

comment on column fan_segments.rules_version is
    'Bumped by a trigger whenever rules change; the evaluator compares it with evaluated_rules_version.';
comment on column fan_segments.evaluated_rules_version is
    'The rules_version the last evaluation evaluated (NULL: never evaluated).';
comment on column fan_segments.evaluation_claimed_at is
    'When segment_evaluator last enqueued its evaluation; cleared by the evaluation.';

-- Existing segments: their rules as version 1, never evaluated (so due).
update fan_segments set rules_version = 1, rules_changed_at = now();

create function fan_segments_track_rules() returns trigger
    language plpgsql
as $$
begin
    if tg_op = 'INSERT' then
        new.rules_version := 1;
        new.rules_changed_at := now();
    elsif new.rules is distinct from old.rules then
        new.rules_version := old.rules_version + 1;
        new.rules_changed_at := now();
    else
        new.rules_version := old.rules_version;
        new.rules_changed_at := old.rules_changed_at;
    end if;
    if tg_op = 'INSERT' or new.rules_version <> old.rules_version or new.status is distinct from old.status then
        -- wakes segment_evaluator (delivered on commit)
        perform pg_notify('geniehelper_fan_segments', '');
    end if;
    return new;
end
$$;

comment on function fan_segments_track_rules() is
    'BEFORE INSERT/UPDATE on fan_segments: rules_version and rules_changed_at follow the rules column only.';

create trigger fan_segments_track_rules
    before insert or update on fan_segments
    for each row execute function fan_segments_track_rules();

-- The evaluator's claim (system role): that column only, never user_id or the rules.
grant update (evaluation_claimed_at) on fan_segments to geniehelper_system;
