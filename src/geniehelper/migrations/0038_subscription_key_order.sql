-- 0038 fan_subscriptions: the key leads with the connection, and the connection-only index goes
-- (issue #21, bench/README.md "sync").
--
-- The sync reads a page's recorded subscriptions by (user, connection, account): one row each. While
-- a large initial sync grows the table faster than autovacuum re-analyses it, the planner, its
-- statistics from a near-empty table, costed fan_subscriptions_connection_idx (user, connection)
-- plus a filter on the account the same as the three-column key, and took it: every subscription of
-- the connection read once per account looked up (1.4 ms each, 20,000 rows filtered away at a fifth
-- of a 100,000-fan pass), until the next analyse. With the connection second in the key, the key
-- serves the connection's foreign key and its deletes, no index offers that trap, and the account's
-- foreign key gets an index of its own (each account has a subscription or two).

drop index fan_subscriptions_connection_idx;
drop index fan_subscriptions_account_connection_key;
create unique index fan_subscriptions_connection_account_key
    on fan_subscriptions (user_id, platform_connection_id, fan_platform_account_id) nulls not distinct;
create index fan_subscriptions_account_idx on fan_subscriptions (user_id, fan_platform_account_id);
