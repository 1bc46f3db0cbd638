"""`geniehelper keys rotate`: every stored token re-encrypted with the active key (own database)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess

import asyncpg

from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database
from geniehelper.domain import platform as connections
from tests.helpers import BIN
from tests.test_publishing import KEY_B64, Sandbox, make_connected_creator, sandbox

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
