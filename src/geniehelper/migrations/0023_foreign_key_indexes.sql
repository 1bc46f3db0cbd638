-- 0023: an index for every foreign key of a creator table, leading with its first two columns
-- (user_id and the reference). Without one, deleting or merging a referenced row (a fan account, a
-- message, a segment) scans the referencing table, and joins from the referenced side do too.
-- References that are often NULL get partial indexes: those rows cost the writes nothing, and an
-- equality lookup (what the foreign-key checks and joins run) implies NOT NULL, so it uses them.
-- tests/test_data_model.py::test_every_foreign_key_has_an_index_leading_with_its_columns keeps it so.

create index automation_rule_actions_fan_platform_account_id_idx on automation_rule_actions (user_id, fan_platform_account_id)
    where fan_platform_account_id is not null;
create index automation_rules_fan_segment_id_idx on automation_rules (user_id, fan_segment_id)
    where fan_segment_id is not null;
create index fan_custom_requests_fan_platform_account_id_idx on fan_custom_requests (user_id, fan_platform_account_id)
    where fan_platform_account_id is not null;
create index fan_custom_requests_source_message_id_idx on fan_custom_requests (user_id, source_message_id)
    where source_message_id is not null;
create index fan_import_runs_media_job_id_idx on fan_import_runs (user_id, media_job_id)
    where media_job_id is not null;
create index fan_memories_source_message_id_idx on fan_memories (user_id, source_message_id)
    where source_message_id is not null;
create index fan_transactions_content_post_id_idx on fan_transactions (user_id, content_post_id)
    where content_post_id is not null;
create index fan_transactions_fan_custom_request_id_idx on fan_transactions (user_id, fan_custom_request_id)
    where fan_custom_request_id is not null;
create index fan_transactions_fan_message_id_idx on fan_transactions (user_id, fan_message_id)
    where fan_message_id is not null;
create index fan_transactions_fan_platform_account_id_idx on fan_transactions (user_id, fan_platform_account_id)
    where fan_platform_account_id is not null;
create index fan_transactions_media_collection_id_idx on fan_transactions (user_id, media_collection_id)
    where media_collection_id is not null;
create index hitl_action_queue_automation_rule_id_idx on hitl_action_queue (user_id, automation_rule_id)
    where automation_rule_id is not null;
create index hitl_action_queue_automation_rule_run_id_idx on hitl_action_queue (user_id, automation_rule_run_id)
    where automation_rule_run_id is not null;
create index hitl_action_queue_fan_profile_id_idx on hitl_action_queue (user_id, fan_profile_id)
    where fan_profile_id is not null;
create index media_collections_cover_asset_id_idx on media_collections (user_id, cover_asset_id)
    where cover_asset_id is not null;
create index message_broadcast_deliveries_conversion_transaction_id_idx
    on message_broadcast_deliveries (user_id, conversion_transaction_id)
    where conversion_transaction_id is not null;
create index message_broadcast_deliveries_fan_message_id_idx on message_broadcast_deliveries (user_id, fan_message_id)
    where fan_message_id is not null;
create index message_broadcast_deliveries_fan_platform_account_id_idx
    on message_broadcast_deliveries (user_id, fan_platform_account_id);
create index message_broadcasts_campaign_id_idx on message_broadcasts (user_id, campaign_id)
    where campaign_id is not null;
create index message_broadcasts_fan_segment_id_idx on message_broadcasts (user_id, fan_segment_id)
    where fan_segment_id is not null;
create index message_broadcasts_message_template_id_idx on message_broadcasts (user_id, message_template_id)
    where message_template_id is not null;
