"""Platform connections: the current state of each creator's platform account (credentials, health)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from geniehelper.crypto import CredentialCipher, CredentialContext


class PlatformConnection(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: UUID
    user_id: UUID
    platform: str
    external_account_id: str
    handle: str | None
    auth_token_enc: str | None
    credential_key_id: str | None
    status: str
    health: str
    health_reason: str | None
    follower_count: int | None
    subscriber_count: int | None
    stats_updated_at: datetime | None

    def __repr__(self) -> str:  # the encrypted token is not a secret, but keep log lines short
        return f"PlatformConnection(id={self.id}, platform={self.platform!r}, health={self.health!r})"


TOKEN_COLUMN = "auth_token_enc"
REFRESH_TOKEN_COLUMN = "refresh_token_enc"


def token_context(connection_id: UUID, user_id: UUID, column: str = TOKEN_COLUMN) -> CredentialContext:
    """The row identity bound into the ciphertext: a token moved to another row (or column) fails to decrypt."""
    return CredentialContext("platform_connections", column, str(connection_id), str(user_id))


GET = """
select id, user_id, platform, external_account_id, handle, auth_token_enc, credential_key_id,
       status, health, health_reason, follower_count, subscriber_count, stats_updated_at
  from platform_connections where id = $1
"""

INSERT = """
insert into platform_connections (user_id, platform, external_account_id, handle)
values ($1, $2, $3, $4)
on conflict (user_id, platform, external_account_id) do update set handle = excluded.handle
returning id
"""

# A (re)connected account is scraped at once; an expired auth is no longer known to be expired.
SET_TOKEN = """
update platform_connections
   set auth_token_enc = $2, credential_key_id = $3, next_scrape_at = null,
       health = case when health = 'auth_expired' then 'unknown' else health end
 where id = $1
"""

MARK_HEALTH = """
update platform_connections
   set health = $2, health_reason = $3, last_health_check_at = now()
 where id = $1
"""

ALL_WITH_TOKENS = """
select id, user_id, auth_token_enc, refresh_token_enc from platform_connections
 where auth_token_enc is not null or refresh_token_enc is not null
"""

# Rotation's write lands only if neither token changed since it was read (a reconnect meanwhile
# stored a new token, already under the active key: it must not be overwritten with the old one).
SET_TOKENS_IF_UNCHANGED = """
update platform_connections set auth_token_enc = $2, refresh_token_enc = $3, credential_key_id = $4
 where id = $1 and auth_token_enc is not distinct from $5 and refresh_token_enc is not distinct from $6
"""

TOKENS_BY_KEY = """
select coalesce(credential_key_id, '(none)') as key_id, count(*)::int as connections from platform_connections
 where auth_token_enc is not null or refresh_token_enc is not null group by 1
"""

RotationOutcome = Literal["rotated", "current", "changed_meanwhile"]


async def rotate_tokens(conn: Any, cipher: CredentialCipher, row: Any) -> RotationOutcome:
    """Re-encrypt a connection's tokens (both columns) with the active key; compare-and-set, so a
    rerun resumes where an interrupted one stopped. Raises CredentialError for a token no
    configured key can read."""
    stored = {TOKEN_COLUMN: row["auth_token_enc"], REFRESH_TOKEN_COLUMN: row["refresh_token_enc"]}
    if not any(value and cipher.needs_rotation(value) for value in stored.values()):
        return "current"
    fresh = {
        column: cipher.reencrypt(value, token_context(row["id"], row["user_id"], column)) if value else None
        for column, value in stored.items()
    }
    status = await conn.execute(
        SET_TOKENS_IF_UNCHANGED, row["id"], fresh[TOKEN_COLUMN], fresh[REFRESH_TOKEN_COLUMN], cipher.active_key_id,
        stored[TOKEN_COLUMN], stored[REFRESH_TOKEN_COLUMN],
    )  # fmt: skip
    return "rotated" if status == "UPDATE 1" else "changed_meanwhile"


async def get(conn: Any, connection_id: UUID) -> PlatformConnection | None:
    row = await conn.fetchrow(GET, connection_id)
    return PlatformConnection(**dict(row)) if row else None


async def connect_account(
    conn: Any,
    cipher: CredentialCipher,
    *,
    user_id: UUID,
    platform: str,
    external_account_id: str,
    token: str,
    handle: str | None = None,
) -> UUID:
    """Create (or update) a connection and store its token encrypted, bound to the row."""
    connection_id: UUID = await conn.fetchval(INSERT, user_id, platform, external_account_id, handle)
    stored = cipher.encrypt(token, token_context(connection_id, user_id))
    await conn.execute(SET_TOKEN, connection_id, stored, cipher.active_key_id)
    return connection_id


def decrypt_token(cipher: CredentialCipher, connection: PlatformConnection) -> str:
    if not connection.auth_token_enc:
        from geniehelper.crypto import CredentialKeyError

        raise CredentialKeyError(f"platform connection {connection.id} has no stored token")
    return cipher.decrypt(connection.auth_token_enc, token_context(connection.id, connection.user_id))


async def mark_health(conn: Any, connection_id: UUID, health: str, reason: str | None) -> None:
    await conn.execute(MARK_HEALTH, connection_id, health, reason)
