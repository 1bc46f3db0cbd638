-- 0029 segments and scores at scale (issue #22, bench/README.md "segments"): two covering partial
-- indexes over completed transactions, the only rows a spend rule, score_fans or a profile's
-- composite figures read. Each answers its queries from the index alone (an index-only scan: no
-- heap visit per transaction), so it reads a fraction of the table's pages.
--
-- By time: a spend rule over the last N days (sum or count, by kind) reads just that window's
-- entries, then groups them per fan.
create index fan_transactions_completed_time_idx on fan_transactions (user_id, occurred_at)
    include (fan_profile_id, kind, amount) where status = 'completed';

-- By fan: an all-time spend rule, score_fans' per-fan features and the profiles' lifetime spend and
-- last purchase read every completed transaction in fan order, grouped as they stream (no hash of a
-- million groups).
create index fan_transactions_completed_fan_idx on fan_transactions (user_id, fan_profile_id)
    include (occurred_at, kind, amount) where status = 'completed';
