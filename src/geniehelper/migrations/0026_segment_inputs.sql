-- 0026 segments re-evaluated when their inputs change (docs/segments.md, "segment_evaluator").
--
-- An evaluation records the xmin of the snapshot its statement read (evaluated_snapshot_xmin): every
-- transaction with a lower id had finished, so its rows were either seen or rolled back. A domain
-- event (the sync writes one with each new purchase, tip, subscription event, inbound message) whose
-- writing transaction (xact_id) is not below that xmin may not have been seen: the segment is due.
-- Comparing transaction ids, not timestamps, catches the event of a sync that began before the
-- evaluation and committed after it. segment_join / segment_leave events are the evaluator's own
-- output, not inputs.

alter table fan_segments add column evaluated_snapshot_xmin xid8;

comment on column fan_segments.evaluated_snapshot_xmin is
    'pg_snapshot_xmin of the snapshot the last evaluation read: a domain event of a transaction at or above it '
    'makes the segment due (segment_evaluator).';

-- segment_evaluator's one probe per segment: the creator's newest input event.
create index domain_events_inputs_idx on domain_events (user_id, xact_id desc)
    where event_type not in ('segment_join', 'segment_leave');

-- 0006's comment on this column said "last confirmed by an evaluation": a refresh by difference
-- never writes members who stay, so it is when the row was last written (its creation, in practice).
comment on column fan_segment_members.updated_at is
    'When this membership row was last written: refreshes insert joiners and delete leavers and never touch '
    'members who stay, so this is in practice when the fan joined. The segment''s last_evaluated_at says '
    'when the membership was last confirmed.';
