"""`geniehelper keys rotate`: every stored token re-encrypted with the active key (own database)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess

import asyncpg

from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database
from geniehelper.domain import platform as connections
from tests.helpers import BIN
from tests.sync_support import KEY_B64
from tests.test_publishing import Sandbox, make_connected_creator, sandbox

__all__ = ["sandbox"]  # the module-scoped fixture, imported for this module


async def test_keys_rotate_reencrypts_every_token_with_the_active_key(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, database_url: str, project_env: dict[str, str]
) -> None:
    creator = await make_connected_creator(db, owner, sandbox)
    new_key = base64.b64encode(os.urandom(32)).decode()
    env = dict(project_env, DATABASE_URL=database_url, CREDENTIALS_ENC_KEY_B64=new_key, CREDENTIALS_ENC_KEY_ID="k2",
               CREDENTIALS_OLD_KEYS=f"k1:{KEY_B64}")  # fmt: skip
    result = await asyncio.to_thread(
        subprocess.run, [str(BIN / "geniehelper"), "keys", "rotate"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "re-encrypted" in result.stderr and "0 could not be read" in result.stderr
    stored = await owner.fetchrow(
        "select auth_token_enc, credential_key_id from platform_connections where id = $1", creator.connection_id
    )
    assert stored["credential_key_id"] == "k2" and stored["auth_token_enc"].startswith("gh1:k2:")
    rotated = CredentialCipher.from_settings_values(new_key, "k2", None)
    token = rotated.decrypt(stored["auth_token_enc"], connections.token_context(creator.connection_id, creator.user_id))
    assert token not in result.stderr and token not in result.stdout
    me = await sandbox.http.get(f"{sandbox.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200


async def test_rotation_covers_both_token_columns_is_compare_and_set_and_status_counts_by_key(
    db: Database, owner: asyncpg.Connection, sandbox: Sandbox, database_url: str, project_env: dict[str, str]
) -> None:
    old = CredentialCipher.from_settings_values(KEY_B64, "k1", None)
    creator = await make_connected_creator(db, owner, sandbox)
    refresh_ctx = connections.token_context(creator.connection_id, creator.user_id, connections.REFRESH_TOKEN_COLUMN)
    await owner.execute(
        "update platform_connections set refresh_token_enc = $2 where id = $1",
        creator.connection_id, old.encrypt("the-refresh-token", refresh_ctx),
    )  # fmt: skip
    new_key = base64.b64encode(os.urandom(32)).decode()
    env = dict(project_env, DATABASE_URL=database_url, CREDENTIALS_ENC_KEY_B64=new_key, CREDENTIALS_ENC_KEY_ID="k3",
               CREDENTIALS_OLD_KEYS=f"k1:{KEY_B64}")  # fmt: skip

    def keys(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "geniehelper"), "keys", *command], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    before = json.loads((await asyncio.to_thread(keys, "status", "--json")).stdout)["connections_by_key"]
    assert before.get("k1", 0) >= 1 and "k3" not in before
    # A reconnect between rotation's read and its write: the write must not put the old token back.
    rotated = CredentialCipher.from_settings_values(new_key, "k3", f"k1:{KEY_B64}")
    async with db.creator_tx(creator.user_id) as conn:
        (stale,) = [r for r in await conn.fetch(connections.ALL_WITH_TOKENS) if r["id"] == creator.connection_id]
        await connections.connect_account(
            conn, rotated, user_id=creator.user_id, platform="sandbox", external_account_id=creator.account_id,
            token="reconnected-token",
        )  # fmt: skip
        assert await connections.rotate_tokens(conn, rotated, stale) == "changed_meanwhile"
    row = await owner.fetchrow("select * from platform_connections where id = $1", creator.connection_id)
    context = connections.token_context(creator.connection_id, creator.user_id)
    assert rotated.decrypt(row["auth_token_enc"], context) == "reconnected-token"

    # Rows this module's other tests left under keys this run does not know are reported, not touched.
    foreign = await owner.fetchval(
        "select count(*) from platform_connections where credential_key_id not in ('k1', 'k3')"
    )
    result = await asyncio.to_thread(keys, "rotate")
    assert result.returncode == (1 if foreign else 0), result.stderr
    assert f"{foreign} could not be read" in result.stderr
    row = await owner.fetchrow("select * from platform_connections where id = $1", creator.connection_id)
    assert row["credential_key_id"] == "k3"
    assert row["auth_token_enc"].startswith("gh1:k3:") and row["refresh_token_enc"].startswith("gh1:k3:")
    assert rotated.decrypt(row["refresh_token_enc"], refresh_ctx) == "the-refresh-token"
    assert rotated.decrypt(row["auth_token_enc"], context) == "reconnected-token"
    again = await asyncio.to_thread(keys, "rotate")  # resumable: a rerun finds nothing left to do
    assert "re-encrypted 0 connections" in again.stderr
    after = json.loads((await asyncio.to_thread(keys, "status", "--json")).stdout)["connections_by_key"]
    assert after.get("k1", 0) == 0 and after["k3"] >= 1
