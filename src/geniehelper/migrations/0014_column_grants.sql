-- Least privilege by column: no role that processes act as can move a row to another creator or
-- change a creator's tier (the tier decides quotas).

-- The system role writes exactly the columns its schedulers and the runtime's bookkeeping set; never
-- user_id (its policies see every creator, so a table-wide UPDATE could move rows between them).
revoke update on media_jobs from geniehelper_system;
grant update (status, attempts, started_at, heartbeat_at, lease_expires_at, worker_id, dispatch_no, enqueued_at,
              dispatch_error, error, error_kind, run_at, result, progress, finished_at, updated_at)
    on media_jobs to geniehelper_system;
revoke update on scheduled_posts from geniehelper_system;
grant update (status, error_message, queued_at, updated_at) on scheduled_posts to geniehelper_system;

-- A creator's tier changes only through the system role (billing, subscription sync): the app may
-- register its own creator (the tier is then the default) and edit its name and e-mail.
revoke insert, update on creators from geniehelper_app;
grant insert (id, email, display_name) on creators to geniehelper_app;
grant update (email, display_name, updated_at) on creators to geniehelper_app;
grant update (tier, updated_at) on creators to geniehelper_system;
