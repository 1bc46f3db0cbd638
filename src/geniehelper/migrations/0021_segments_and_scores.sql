-- 0021 segments: what the segment evaluator keeps on fan_segments, and segment snapshots
-- (docs/segments.md)
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

-- ---------------------------------------------------------------------------------------------
-- Segment snapshots: a segment's membership frozen at a moment (what a broadcast is sent to).
-- Taken in one statement under the segment's row lock (FOR SHARE), so a snapshot holds the
-- membership of one evaluation, never half of one. Frozen: rows are never updated (a snapshot may
-- be deleted whole; its members go with it, and a deleted fan leaves every snapshot).
-- ---------------------------------------------------------------------------------------------
create table fan_segment_snapshots (
    id                  uuid primary key default gen_random_uuid(),
    user_id             uuid not null references creators (id) on delete cascade,
    fan_segment_id      uuid not null,
    purpose             text check (length(purpose) between 1 and 200),
    member_count        integer not null check (member_count >= 0),
    rules_version       integer,         -- the rules version its membership was evaluated with (NULL: never)
    evaluated_at        timestamptz,     -- the segment's last_evaluated_at: how current the membership was
    taken_at            timestamptz not null default now(),
    foreign key (user_id, fan_segment_id) references fan_segments (user_id, id) on delete cascade,
    unique (user_id, id)
);

comment on table fan_segment_snapshots is
    'A segment''s membership frozen at a moment (broadcast targeting); members: fan_segment_snapshot_members.';

create index fan_segment_snapshots_segment_idx on fan_segment_snapshots (user_id, fan_segment_id, taken_at desc);

create table fan_segment_snapshot_members (
    user_id             uuid not null references creators (id) on delete cascade,
    snapshot_id         uuid not null,
    fan_profile_id      uuid not null,
    primary key (user_id, snapshot_id, fan_profile_id),
    foreign key (user_id, snapshot_id) references fan_segment_snapshots (user_id, id) on delete cascade,
    foreign key (user_id, fan_profile_id) references fan_profiles (user_id, id) on delete cascade
);

comment on table fan_segment_snapshot_members is 'The fans of one fan_segment_snapshots row (frozen).';

create index fan_segment_snapshot_members_fan_idx on fan_segment_snapshot_members (user_id, fan_profile_id);

create function refuse_snapshot_update() returns trigger
    language plpgsql
as $$
begin
    raise exception '% is frozen: UPDATE is not allowed (take a new snapshot instead)', tg_table_name
        using errcode = '55000';
end
$$;

create trigger fan_segment_snapshots_frozen
    before update on fan_segment_snapshots
    for each row execute function refuse_snapshot_update();
create trigger fan_segment_snapshot_members_frozen
    before update on fan_segment_snapshot_members
    for each row execute function refuse_snapshot_update();

alter table fan_segment_snapshots enable row level security;
alter table fan_segment_snapshots force row level security;
create policy tenant_isolation on fan_segment_snapshots
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, delete on fan_segment_snapshots to geniehelper_app;

alter table fan_segment_snapshot_members enable row level security;
alter table fan_segment_snapshot_members force row level security;
create policy tenant_isolation on fan_segment_snapshot_members
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
grant select, insert, delete on fan_segment_snapshot_members to geniehelper_app;

-- ---------------------------------------------------------------------------------------------
-- fan_scoring: when each creator's fans were last scored (score_fans writes it, as the creator)
-- and fan_scorer's claim (the system role: it inserts a creator's row with its claim, and updates
-- the claim only).
-- ---------------------------------------------------------------------------------------------
create table fan_scoring (
    user_id             uuid primary key references creators (id) on delete cascade,
    last_scored_at      timestamptz,
    fans_scored         integer check (fans_scored >= 0),
    model_version       text,
    claimed_at          timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

comment on table fan_scoring is
    'Per creator: when score_fans last scored their fans (and with which model), and fan_scorer''s claim.';

create index fan_scoring_due_idx on fan_scoring (last_scored_at nulls first);

create trigger fan_scoring_touch_updated_at
    before update on fan_scoring
    for each row execute function touch_updated_at();

alter table fan_scoring enable row level security;
alter table fan_scoring force row level security;
create policy tenant_isolation on fan_scoring
    to geniehelper_app
    using (user_id = (select app_current_user_id()))
    with check (user_id = (select app_current_user_id()));
create policy system_scan on fan_scoring
    to geniehelper_system
    using (true)
    with check (true);
grant select, insert, update on fan_scoring to geniehelper_app;
grant select on fan_scoring to geniehelper_system;
grant insert (user_id, claimed_at), update (claimed_at) on fan_scoring to geniehelper_system;
