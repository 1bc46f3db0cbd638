"""The sandbox platform: an in-memory creator platform served over real HTTP, for tests and benchmarks.

It speaks the REST shape `HttpPlatformClient` uses (`/v1/...`, bearer token, `Idempotency-Key` on
writes) and adds loopback-only admin endpoints to create accounts, expire tokens, inject faults and
inspect what was created. State belongs to one `SandboxPlatform` instance; nothing is module-level.

An account is built item by item (small accounts; tests in the same process change them through the
Python API: `add_fans`, `update_subscription` for a cancellation, rebill or win-back, `verify_email`
for a verified address) or, with `lazy`, generated per page from its seed (`listing`: 100,000 fans
and 1,000,000 transactions cost nothing until read). Either evolves one deterministic step at a time
with `advance` (`evolve`: new fans, cancellations, rebills, win-backs, tips, purchases, messages),
whose answer lists exactly what changed; `counts` says how many items each listing holds.

The subscription-history listing (`GET /v1/subscriptions/history`, `history`) holds every lifecycle
event of the account's subscriptions: `n_history_per_fan` seeded ones per fan, then what `advance`
appends.

Modules: `platform` (state and Python API), `routes` (the HTTP handlers), `accounts` (an account's
state and seeding), `listing` (items by position, generated on demand), `history` (the subscription
history), `evolve` (`advance`),
`faults`, `wire` (HTTP plumbing), `serve`.

Admin API (no token; the server binds loopback only):
    POST   /admin/accounts                    {username?, seed?, n_fans?, n_transactions_per_fan?,
                                               n_messages_per_fan?, base_followers?, lazy?, n_transactions?,
                                               n_messages?, n_history_per_fan?} -> {account_id, token}
    POST   /admin/accounts/{id}/expire-token  the token now gets 401
    POST   /admin/accounts/{id}/rotate-token  -> {account_id, token}: a new valid token
    POST   /admin/accounts/{id}/advance       {new_fans?, cancellations?, rebills?, win_backs?, tips?,
                                               purchases?, messages?} -> {step, new_fans, cancelled, rebilled,
                                               won_back, transactions, messages, history}: ids of what changed
    GET    /admin/accounts/{id}/counts        {fans, subscriptions, transactions, messages, subscription_history}
    GET    /admin/accounts/{id}/posts         every post with the idempotency key it was created with
    POST   /admin/faults                      {kind, count, path_prefix, method?, account_id?, retry_after_s,
                                               retry_after_format, delay_s, status} -> {fault_id}
    DELETE /admin/faults                      drop all pending faults
    GET    /admin/requests                    {"counts": {"GET /v1/me": n, ...}} for /v1 requests

Fault kinds, applied to the next `count` matching authenticated /v1 requests:
    rate_limit            429 with Retry-After (seconds or an HTTP date)
    server_error          `status` (5xx), nothing done
    slow                  wait `delay_s`, then handle normally
    accept_then_timeout   handle normally (a post is stored), then hold the response `delay_s`: longer than
                          the client's timeout, it simulates a write accepted whose answer never arrives
"""

from geniehelper.platforms.sandbox.accounts import NewAccount
from geniehelper.platforms.sandbox.evolve import Advanced, AdvanceSpec
from geniehelper.platforms.sandbox.faults import FaultKind, FaultSpec
from geniehelper.platforms.sandbox.platform import DEFAULT_PAGE_SIZE, SandboxPlatform
from geniehelper.platforms.sandbox.serve import run_sandbox, serve_sandbox
from geniehelper.platforms.sandbox.wire import MAX_IDEMPOTENCY_KEY_LEN

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_IDEMPOTENCY_KEY_LEN",
    "AdvanceSpec",
    "Advanced",
    "FaultKind",
    "FaultSpec",
    "NewAccount",
    "SandboxPlatform",
    "run_sandbox",
    "serve_sandbox",
]
