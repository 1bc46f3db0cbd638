"""The job runtime: job contracts, the record store, enqueueing, running attempts, quotas, workers.

`definition` (contracts and payload validation) → `store` (all job-record SQL) → `quotas` →
`transport` (Redis and the arq wire format) → `queue` (enqueue, record, push) → `retry` and
`context` → `attempt` (one delivery, start to outcome) → `worker` (arq settings per queue).
Modules import only those to their left, plus `geniehelper.db`, `settings` and `crypto`; the
runtime never imports `jobs/`, `schedulers/` or `workers/`.
"""
