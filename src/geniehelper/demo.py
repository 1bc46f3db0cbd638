"""The demo `geniehelper up` sets up on the embedded stack, so the first run shows a real flow.

A demo creator is connected to the sandbox platform (run by `up` beside the Procfile processes) and
gets a few posts scheduled over the next minute: watch post_scheduler dispatch them and the worker
publish them. It also gets one image asset, which the media worker describes (through the local
AI server `up` runs) and converts to WebP. Only for the embedded development stack; production
never runs this.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import httpx
from PIL import Image

from geniehelper.crypto import CredentialCipher
from geniehelper.db import Database, connect_owner
from geniehelper.domain import media
from geniehelper.domain import platform as connections
from geniehelper.media.store import LocalMediaStore
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from geniehelper.runtime.transport import create_arq_redis
from geniehelper.settings import Settings

DEMO_EMAIL = "demo@geniehelper.local"


def _development_secret(path: Path, make: Callable[[], str]) -> str:
    """A per-checkout secret for the embedded stack, kept beside its data (mode 0600)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


def development_key(data_dir: Path) -> str:
    """The credentials key of the embedded stack (`credentials.key`)."""
    return _development_secret(data_dir / "credentials.key", lambda: base64.b64encode(os.urandom(32)).decode())


def development_web_token(data_dir: Path) -> str:
    """An admin token for the HTTP API on the embedded stack (`web-admin.token`)."""
    return _development_secret(data_dir / "web-admin.token", lambda: secrets.token_urlsafe(32))


async def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            try:
                (await http.get(f"{url}/admin/requests", timeout=1.0)).raise_for_status()
                return
            except httpx.HTTPError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def seed_demo(
    database_url: str, owner_url: str, sandbox_url: str, cipher: CredentialCipher, *, posts: int = 3
) -> UUID:
    """Create (or refresh) the demo creator, its sandbox connection, and `posts` posts due soon."""
    await wait_for_http(sandbox_url)
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{sandbox_url}/admin/accounts", json={"username": "demo", "n_fans": 25})
        response.raise_for_status()
        account = response.json()
    owner = await connect_owner(owner_url)
    try:
        # Registration is the one step not done as the creator: the creator row is the tenant root.
        user_id: UUID = await owner.fetchval(
            "insert into creators (email, display_name, tier) values ($1, 'Demo Creator', 'creator')"
            " on conflict (email) do update set display_name = excluded.display_name returning id",
            DEMO_EMAIL,
        )
    finally:
        await owner.close()
    db = await Database.open(database_url, min_size=1, max_size=2)
    try:
        async with db.creator_tx(user_id) as conn:
            # The sandbox keeps its state in memory: each run is a new account; retire the old ones.
            await conn.execute(
                "update platform_connections set status = 'disconnected' where platform = 'sandbox'"
                " and external_account_id <> $1",
                account["account_id"],
            )
            connection_id = await connections.connect_account(
                conn, cipher, user_id=user_id, platform="sandbox", external_account_id=account["account_id"],
                token=account["token"], handle="demo",
            )  # fmt: skip
            now = datetime.now(UTC)
            for n in range(1, posts + 1):
                post_id = await conn.fetchval(
                    "insert into content_posts (user_id, title, caption, hashtags, platform_targets, status)"
                    " values ($1, $2, $3, '{demo}', '{sandbox}', 'scheduled') returning id",
                    user_id, f"Demo post {n}", f"Demo post {n}, scheduled by geniehelper up",
                )  # fmt: skip
                await conn.execute(
                    "insert into scheduled_posts (user_id, content_post_id, platform_connection_id, platform,"
                    " scheduled_time) values ($1, $2, $3, 'sandbox', $4)",
                    user_id, post_id, connection_id, now + timedelta(seconds=15 * n),
                )  # fmt: skip
    finally:
        await db.close()
    return user_id


# What the media worker does with the demo asset: (job, payload beyond the asset id).
DEMO_MEDIA_JOBS: list[tuple[str, dict[str, object]]] = [
    ("media_describe", {}),
    ("media_image_convert", {"format": "webp", "max_width": 320}),
]


def _demo_image(path: Path) -> None:
    """A 640x360 gradient, made here so the demo needs no file of its own."""
    image = Image.new("RGB", (640, 360))
    image.putdata([(x * 255 // 639, y * 255 // 359, 160) for y in range(360) for x in range(640)])
    image.save(path, format="PNG")


async def seed_demo_media(database_url: str, redis_url: str, settings: Settings, user_id: UUID) -> list[UUID]:
    """Store one demo image for the creator and enqueue DEMO_MEDIA_JOBS for it; their record ids."""
    with tempfile.TemporaryDirectory() as work:
        picture = Path(work) / "demo.png"
        await asyncio.to_thread(_demo_image, picture)
        # The same bytes every run: a second `up` finds the object stored already.
        stored = await LocalMediaStore(settings.media_root_dir).put(picture, f"{user_id}/uploads/demo.png")
    db = await Database.open(database_url, min_size=1, max_size=2)
    redis = await create_arq_redis(redis_url)
    try:
        async with db.creator_tx(user_id) as conn:
            asset = await media.create_asset(
                conn, user_id, "image", stored.key, original_filename="demo.png", mime_type="image/png",
                byte_size=stored.byte_size, checksum_sha256=stored.sha256, width=640, height=360,
            )  # fmt: skip
        queue = JobQueue(db, redis, discover(settings.job_packages))
        jobs = [
            await queue.enqueue(name, {"asset_id": str(asset.id), **extra}, user_id=user_id)
            for name, extra in DEMO_MEDIA_JOBS
        ]
    finally:
        await redis.aclose()
        await db.close()
    return [job.id for job in jobs]
