-- 0034 subscription history: the fan sync reads a platform's subscription-history listing (every
-- lifecycle event of the account's subscriptions, not only the current state; docs/sync.md).
--
-- 1. platform_sync_cursors gets the resource `subscription_history` (an append-only listing, read
--    incrementally like transactions).
-- 2. fan_subscription_events: a platform event id is recorded once per fan account. The history
--    merge inserts with ON CONFLICT DO NOTHING, so an event re-read after a killed sync (or met again
--    on the page a cursor stays at) is not appended twice. The existing unique key
--    (user_id, fan_platform_account_id, event_type, occurred_at) still holds for every row.

alter table platform_sync_cursors drop constraint platform_sync_cursors_resource_check;
alter table platform_sync_cursors add constraint platform_sync_cursors_resource_check
    check (resource in ('fans', 'subscriptions', 'subscription_history', 'transactions', 'messages'));

create unique index fan_subscription_events_external_id_key
    on fan_subscription_events (user_id, fan_platform_account_id, external_event_id)
    where external_event_id is not null;
