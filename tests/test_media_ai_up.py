"""`geniehelper up` on the embedded stack with OLLAMA_URL unset: it starts the local AI server as a
process of its own and gives its URLs to the others, so a real media worker process describes an
image through it, end to end."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil
from PIL import Image

from geniehelper.db import Database
from geniehelper.domain import media
from geniehelper.embedded import EmbeddedStack
from geniehelper.media.store import LocalMediaStore
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import JobRegistry
from geniehelper.runtime.transport import create_arq_redis
from jobs.media_describe import MEDIA_DESCRIBE
from tests.helpers import BIN, ROOT, base_env, processes_using, spawn, wait_until


async def test_up_serves_the_local_ai_server_to_the_media_worker_when_ollama_url_is_unset(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procfile = tmp_path / "Procfile"
    procfile.write_text("media_worker: geniehelper worker media\n")
    env = {k: v for k, v in base_env(DATA_DIR=str(data), HEALTH_INTERVAL_S="1").items()
           if k not in ("OLLAMA_URL", "STT_URL", "MEDIA_ROOT", "MEDIA_TMP_DIR")}  # fmt: skip
    up = spawn([str(BIN / "geniehelper"), "up", "--no-demo", "--procfile", str(procfile)], env, cwd=ROOT)
    try:
        (said,) = await asyncio.to_thread(
            up.wait_for, r"ai: the local Ollama-compatible server at (http://127\.0\.0\.1:\d+) .*speech to text at "
            r"(http://\S+/v1/audio/transcriptions)", 180,
        )  # fmt: skip
        ollama_url, stt_url = said.group(1), said.group(2)
        assert stt_url == f"{ollama_url}/v1/audio/transcriptions"
        await asyncio.to_thread(up.wait_for, r"starting 2 processes: media_worker, local_ai", 60)
        await asyncio.to_thread(up.wait_for, r'"event": "local_ai.listening"', 60)
        await asyncio.to_thread(up.wait_for, r'"event": "ai.clients_ready"', 60)
        async with httpx.AsyncClient(timeout=10) as http:
            tags = (await http.get(f"{ollama_url}/api/tags")).json()
        assert [m["name"] for m in tags["models"]] == ["llava"]  # OLLAMA_MODEL's default

        urls = EmbeddedStack(data).running()
        assert urls is not None
        owner = await asyncpg.connect(urls.owner_url)
        db = await Database.open(urls.database_url, min_size=1, max_size=2)
        redis = await create_arq_redis(urls.redis_url)
        try:
            creator = await owner.fetchval(
                "insert into creators (email, tier) values ('up-ai@example.test', 'creator') returning id"
            )
            photo = tmp_path / "orange.png"
            Image.new("RGB", (90, 40), (245, 140, 20)).save(photo)
            stored = await LocalMediaStore(data / "media").put(photo, f"{creator}/uploads/orange.png")
            async with db.creator_tx(creator) as conn:
                asset = await media.create_asset(conn, creator, "image", stored.key, mime_type="image/png",
                                                 byte_size=stored.byte_size, checksum_sha256=stored.sha256)  # fmt: skip
            job = await JobQueue(db, redis, JobRegistry([MEDIA_DESCRIBE])).enqueue(
                "media_describe", {"asset_id": str(asset.id), "stream": True}, user_id=creator
            )
            deadline = time.monotonic() + 90
            while (status := await owner.fetchval("select status from media_jobs where id = $1", job.id)) not in (
                "completed", "failed",
            ) and time.monotonic() < deadline:  # fmt: skip
                await asyncio.sleep(0.2)
            row = await owner.fetchrow(
                "select ai_description, ai_description_model from media_assets where id = $1", asset.id
            )
            error = await owner.fetchval("select error from media_jobs where id = $1", job.id)
            assert status == "completed", (error, up.text())
            assert row is not None and row["ai_description_model"] == "llava"
            assert row["ai_description"] == "The picture is 90x40 pixels, landscape, mostly orange (100%); bright."
        finally:
            await redis.aclose()
            await db.close()
            await owner.close()
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.proc.wait, 60) == 0, up.text()
    assert "local_ai" in up.text() and "stopped" in up.text()
    assert await asyncio.to_thread(wait_until, lambda: not processes_using(data), 15)


async def test_up_with_ollama_url_set_starts_no_local_server_and_passes_the_url_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procfile = tmp_path / "Procfile"
    show = "import os, time; print('AI', os.environ['OLLAMA_URL'], os.environ.get('STT_URL'), flush=True); "
    marker = f"sleep-{uuid.uuid4().hex}"
    show += f"time.sleep(600)  # {marker}"
    procfile.write_text(f'media_worker: {sys.executable} -c "{show}"\n')
    env = {k: v for k, v in base_env(DATA_DIR=str(data), OLLAMA_URL="http://127.0.0.1:9/").items() if k != "STT_URL"}
    up = spawn([str(BIN / "geniehelper"), "up", "--no-demo", "--procfile", str(procfile)], env, cwd=ROOT)
    try:
        await asyncio.to_thread(up.wait_for, r"starting 1 processes: media_worker ", 180)
        await asyncio.to_thread(up.wait_for, r"AI http://127\.0\.0\.1:9/ None", 60)
        assert "local_ai" not in up.text() and "the local Ollama-compatible server" not in up.text()
    finally:
        up.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.proc.wait, 60) == 0, up.text()
    assert await asyncio.to_thread(wait_until, lambda: not processes_using(data), 15)
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
