-- 0001 roles and tenancy
--
-- Cluster-wide roles (created only if missing: several databases may share a cluster),
-- the tenancy function every RLS policy uses, the shared trigger functions, and the tenant
-- root table `creators`. See docs/data-model.md, "Tenancy design".

-- ---------------------------------------------------------------------------------------------
-- Roles. NOLOGIN: the application connects as the schema owner and switches to one of these per
-- connection (SET ROLE), so every privilege they hold is granted explicitly below and in later
-- files. Concurrent migrations of two databases in one cluster may race on CREATE ROLE: the loser
-- swallows the duplicate error.
-- ---------------------------------------------------------------------------------------------
do $$
declare
    r text;
begin
    foreach r in array array['geniehelper_app', 'geniehelper_system'] loop
        if not exists (select from pg_catalog.pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin nobypassrls nosuperuser', r);
            exception when duplicate_object or unique_violation then
                null;  -- created concurrently by another database's migration
            end;
        elsif exists (
            select from pg_catalog.pg_roles
            where rolname = r and (rolcanlogin or rolbypassrls or rolsuper)
        ) then
            -- Found with attributes that would defeat RLS: put them back.
            execute format('alter role %I nologin nobypassrls nosuperuser', r);
        end if;

        -- The connecting (owner) role must be able to SET ROLE to it. A superuser already can,
        -- and re-granting an existing membership is skipped.
        if not pg_catalog.pg_has_role(current_user, r, 'SET') then
            begin
                -- SET only, no INHERIT: without SET ROLE the owner gets no policy (sees nothing).
                execute format('grant %I to %I with inherit false, set true', r, current_user);
            exception
                when unique_violation then
                    null;  -- granted concurrently
                when insufficient_privilege then
                    raise exception 'role % exists but % may not SET ROLE to it', r, current_user
                        using errcode = '42501',
                              hint = format('A superuser (or a role with ADMIN on %I) must run: GRANT %I TO %I WITH INHERIT FALSE, SET TRUE;',
                                            r, r, current_user);
            end;
        end if;
    end loop;
end
$$;

grant usage on schema public to geniehelper_app, geniehelper_system;

-- ---------------------------------------------------------------------------------------------
-- Tenancy. The application sets the creator per transaction:
--     select set_config('app.user_id', '<uuid>', true);
-- An unset or reset setting reads as '' (not NULL) on a pooled connection; nullif makes that a
-- NULL, and `user_id = NULL` matches nothing. Policies call this as `(select app_current_user_id())`
-- so it is evaluated once per statement (an initPlan) and indexes on user_id are used.
-- ---------------------------------------------------------------------------------------------
create function app_current_user_id() returns uuid
    language sql
    stable
    parallel safe
as $$
    select nullif(current_setting('app.user_id', true), '')::uuid
$$;

comment on function app_current_user_id() is
    'The creator the current transaction acts for (setting app.user_id), or NULL. '
    'Use as (select app_current_user_id()) in policies.';

-- ---------------------------------------------------------------------------------------------
-- Append-only enforcement, shared by every ledger table (attached in the domain files): a
-- row-level BEFORE UPDATE OR DELETE trigger and a statement-level BEFORE TRUNCATE trigger. Both
-- hold for every role, superuser included; only the table owner disabling the trigger on
-- purpose (a documented maintenance operation) gets past them.
-- ---------------------------------------------------------------------------------------------
create function refuse_append_only_change() returns trigger
    language plpgsql
as $$
begin
    raise exception '% is append-only: % is not allowed (rows are never updated or deleted; insert a new row instead)',
        tg_table_name, tg_op
        using errcode = '55000',
              hint = 'Ledgers and snapshots record history; correct a fact by inserting a new row.';
end
$$;

comment on function refuse_append_only_change() is
    'Trigger function refusing UPDATE, DELETE and TRUNCATE on append-only tables (SQLSTATE 55000).';

-- ---------------------------------------------------------------------------------------------
-- updated_at maintenance for mutable tables: a BEFORE UPDATE row trigger sets updated_at to the
-- transaction time unless the statement set it itself.
-- ---------------------------------------------------------------------------------------------
create function touch_updated_at() returns trigger
    language plpgsql
as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end
$$;

comment on function touch_updated_at() is
    'BEFORE UPDATE trigger: sets updated_at = now() unless the UPDATE assigned a new value.';

-- ---------------------------------------------------------------------------------------------
-- creators: the tenant root (stand-in for the Directus users table). Every creator-owned row
-- carries user_id referencing creators.id.
-- ---------------------------------------------------------------------------------------------
create table creators (
    id              uuid primary key default gen_random_uuid(),
    email           text not null unique check (email <> ''),
    display_name    text,
    tier            text not null default 'starter'
                    check (tier in ('starter', 'creator', 'pro', 'studio')),
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

comment on table creators is
    'Tenant root: one row per creator account (stand-in for the Directus users table). '
    'tier is the current subscription tier; its history is subscription_events.';

create trigger creators_touch_updated_at
    before update on creators
    for each row execute function touch_updated_at();

alter table creators enable row level security;
alter table creators force row level security;

-- The app sees and updates only the creator it acts for. It may insert that creator's own row
-- (registration: set app.user_id to the new id first). No DELETE: removing a creator is a
-- deliberate maintenance operation (ledgers refuse the cascade, see docs/data-model.md).
create policy tenant_isolation on creators
    to geniehelper_app
    using (id = (select app_current_user_id()))
    with check (id = (select app_current_user_id()));

-- Schedulers read every creator (tiers drive quotas and scan order).
create policy system_scan on creators
    to geniehelper_system
    using (true)
    with check (true);

grant select, insert, update on creators to geniehelper_app;
grant select on creators to geniehelper_system;
