-- 0039 fresh planner statistics while a sync grows the fan tables (issue #21, bench/README.md "sync").
--
-- An initial sync can grow these tables far faster than autovacuum re-analyses them (it looks once
-- a minute by default). Meanwhile the planner, its statistics from a near-empty table, takes a
-- creator's accounts for a row or two and hashes all of them where it should probe a page's 200
-- keys: at half of a 100,000-fan initial sync the account upsert read each of the creator's 50,000
-- accounts twice per page (70 ms instead of 25). The sync calls this between pages. It analyses
-- each of the tables a sync writes that has grown by half (and by 64 pages, 512 kB) since its last
-- analyse, judged by its size on disk against the size that analyse saw (pg_class.relpages), so it
-- needs no statistics flush to see the growth: about ten analyses on the way to 100,000 rows. A
-- table another session holds (autovacuum, a concurrent sync's analyse) is skipped, not waited for
-- (SKIP_LOCKED): the next call finds it still grown. It runs as the owner (ANALYZE needs it) and can
-- do nothing else. Returns the tables it found grown.

create function refresh_sync_statistics() returns text[]
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
    grown text[];
    name text;
begin
    select coalesce(array_agg(c.relname::text order by c.relname), '{}') into grown
      from pg_class c
     where c.relnamespace = 'public'::regnamespace and c.relkind = 'r'
       and c.relname in ('fan_profiles', 'fan_platform_accounts', 'fan_subscriptions', 'fan_subscription_events',
                         'fan_transactions', 'fan_messages', 'domain_events')
       and pg_relation_size(c.oid) / current_setting('block_size')::int
           >= c.relpages + greatest(c.relpages / 2, 64);
    foreach name in array grown loop
        execute format('analyze (skip_locked) %I', name);
    end loop;
    return grown;
end
$$;
revoke all on function refresh_sync_statistics() from public;
grant execute on function refresh_sync_statistics() to geniehelper_app;
