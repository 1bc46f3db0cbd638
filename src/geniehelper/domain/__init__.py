"""Typed access to the product data model, one module per domain.

Each module holds frozen pydantic models for the rows jobs read (only the columns they need) and
small async query functions. Conventions shared by all of them:

- The connection passed in is already inside `Database.creator_tx(user_id)`: row-level security
  scopes every statement to that creator. Inserts still pass `user_id` explicitly (the policy
  only checks it); the fan CRM, media, analytics and automation queries also filter on it.
- SQL is module-level constant strings with `$n` parameters, never built from input.
- Writers are idempotent on the table's natural key: appends to ledgers and snapshots return
  `None` when the row was already there; upserts return the current row.
- Nothing here opens or commits a transaction: the caller's service owns it.
"""
