"""The media worker: throughput and peak RSS per operation at concurrency 1 (the baseline, same run)
and at what the memory budget admits, on a generated 1080p 10 s clip and a 12 MP photo.

    python -m bench media [--rounds 1] [--concurrency 4] [--budget-mb MEDIA_MEMORY_BUDGET_MB]
                          [--threads N] [--small] [--data-dir DIR]

Each phase runs a real `geniehelper worker media` process over the same batch (`--rounds` x the
eight operations below): first with QUEUES media concurrency 1, then with `--concurrency` as the
upper bound and the budget deciding (its estimates are made from the baseline phase's
measurements), then the same again with MEDIA_FFMPEG_THREADS `--threads` (default cores //
`--concurrency`, at least 1) so the jobs admitted together share the cores without oversubscribing.
Printed per operation: the peak RSS each job recorded (media_job_measurements: ffmpeg's
from wait4 plus the worker's own growth) and the estimate its admission logged; per phase: jobs/min,
the most jobs seen running at once (from the records' start and finish times), and the 1-minute
load average before and after (the machine is shared). `--small`: a 640x360 clip and a 1 MP image,
for trying it out. Correctness (exit 1): every job completed, each in one attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import (
    fmt,
    fresh_database,
    make_creator,
    prepare_redis,
    print_header,
    print_table,
    servers,
    write_results,
)
from geniehelper.db import Database, connect_owner
from geniehelper.domain import media
from geniehelper.media.store import LocalMediaStore
from geniehelper.media.tools import find_ffmpeg
from geniehelper.runtime.queue import JobQueue
from geniehelper.runtime.registry import discover
from geniehelper.settings import Settings

NAME = "media"
BIN = Path(sys.executable).parent
STYLE = {"text": "@bench", "position": "bottom-right", "opacity": 0.6}
# (label, job, asset, payload beyond asset_id)
OPERATIONS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("video transcode 720p", "media_video_transcode", "clip", {"max_width": 1280, "max_height": 720}),
    ("video teaser 5 s", "media_video_teaser", "clip", {}),
    ("video thumbnail", "media_video_thumbnail", "clip", {"at_ms": 5000}),
    ("video watermark", "media_watermark", "clip", {"style": STYLE}),
    ("image convert webp", "media_image_convert", "photo", {"format": "webp"}),
    ("image resize 1600", "media_image_convert", "photo", {"max_width": 1600, "max_height": 1600}),
    ("image watermark", "media_watermark", "photo", {"style": STYLE}),
    ("image strip", "media_strip_metadata", "photo", {}),
]


def make_inputs(folder: Path, small: bool) -> dict[str, tuple[Path, int, int, int | None]]:
    """The clip (H.264/AAC, 10 s at 30 fps) and the photo (JPEG with detail at every scale)."""
    from PIL import Image, ImageDraw, ImageFilter

    width, height = (640, 360) if small else (1920, 1080)
    clip = folder / "clip.mp4"
    subprocess.run(
        [find_ffmpeg(None), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30:duration=10",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=10", "-c:v", "libx264", "-preset", "veryfast",
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(clip)],
        check=True,
    )  # fmt: skip
    pw, ph = (1200, 900) if small else (4000, 3000)
    photo = folder / "photo.jpg"
    im = Image.radial_gradient("L").resize((pw, ph)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for n in range(80):
        x, y, r = (n * 7919) % pw, (n * 104729) % ph, 20 + (n * 31) % 300
        draw.ellipse((x - r, y - r, x + r, y + r), fill=((n * 40) % 256, (n * 90) % 256, (n * 150) % 256))
    grain = Image.effect_noise((pw, ph), 20).convert("RGB")
    Image.blend(im, grain, 0.15).filter(ImageFilter.GaussianBlur(1)).save(photo, "JPEG", quality=92)
    return {"clip": (clip, width, height, 10_000), "photo": (photo, pw, ph, None)}


async def upload(db: Database, store: LocalMediaStore, creator: uuid.UUID, inputs: dict[str, Any]) -> dict[str, Any]:
    assets = {}
    for name, (path, width, height, duration_ms) in inputs.items():
        stored = await store.put(path, f"{creator}/uploads/{path.name}")
        async with db.creator_tx(creator) as conn:
            assets[name] = await media.create_asset(
                conn, creator, "video" if name == "clip" else "image", stored.key, original_filename=path.name,
                mime_type="video/mp4" if name == "clip" else "image/jpeg", byte_size=stored.byte_size,
                checksum_sha256=stored.sha256, width=width, height=height, duration_ms=duration_ms,
            )  # fmt: skip
    return assets


def most_at_once(rows: list[asyncpg.Record]) -> int:
    edges = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows],
                   key=lambda e: (e[0], e[1]))  # fmt: skip
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def run_phase(
    db: Database, owner: asyncpg.Connection, queue: JobQueue, env: dict[str, str], creator: uuid.UUID,
    assets: dict[str, Any], rounds: int, concurrency: int, budget_mb: float, threads: int = 0,
) -> dict[str, Any]:  # fmt: skip
    ids: dict[uuid.UUID, str] = {}
    for round_no in range(rounds):
        for label, job, asset, extra in OPERATIONS:
            # A key of its own: the same request while one is active would be that one job.
            payload = {"asset_id": str(assets[asset].id), **extra}
            ref = await queue.enqueue(job, payload, user_id=creator, key=f"bench:{uuid.uuid4().hex}:{round_no}")
            ids[ref.id] = label
    phase_env = dict(env, QUEUES=json.dumps({"media": {"concurrency": concurrency}}),
                     MEDIA_MEMORY_BUDGET_MB=str(budget_mb), MEDIA_FFMPEG_THREADS=str(threads))  # fmt: skip
    load_before = os.getloadavg()[0]
    log_path = Path(env["MEDIA_TMP_DIR"]).parent / f"worker-{concurrency}-t{threads}.log"
    with log_path.open("w") as log_file:
        worker = subprocess.Popen(  # noqa: ASYNC220 (starts it and returns)
            [str(BIN / "geniehelper"), "worker", "media"], env=phase_env, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            while await owner.fetchval(
                "select count(*) from media_jobs where id = any($1) and status in ('completed', 'failed')", list(ids)
            ) < len(ids):  # fmt: skip
                if worker.poll() is not None:
                    raise SystemExit(f"bench: the media worker exited ({worker.returncode}); see {log_path}")
                await asyncio.sleep(0.2)
            seconds = time.perf_counter() - started
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 60)
    rows = await owner.fetch(
        """select j.id, j.status, j.attempts, j.started_at, j.finished_at, j.error, m.peak_rss_mb
             from media_jobs j left join media_job_measurements m on m.job_id = j.id
            where j.id = any($1)""",
        list(ids),
    )  # fmt: skip
    estimates: dict[str, float] = {}
    for line in log_path.read_text().splitlines():
        if '"memory_admission.admitted"' in line:
            event = json.loads(line)
            estimates[event["record_id"]] = event["estimate_mb"]
    per_op: dict[str, dict[str, Any]] = {}
    for row in rows:
        op = per_op.setdefault(ids[row["id"]], {"peak_rss_mb": 0.0, "estimate_mb": 0.0})
        op["peak_rss_mb"] = max(op["peak_rss_mb"], row["peak_rss_mb"] or 0.0)
        op["estimate_mb"] = max(op["estimate_mb"], estimates.get(str(row["id"]), 0.0))
    return {
        "concurrency": concurrency, "ffmpeg_threads": threads, "budget_mb": budget_mb, "jobs": len(ids),
        "seconds": round(seconds, 1),
        "jobs_per_min": round(len(ids) / seconds * 60, 2), "most_at_once": most_at_once(rows),
        "completed_in_one_attempt": sum(1 for r in rows if r["status"] == "completed" and r["attempts"] == 1),
        "errors": [r["error"] for r in rows if r["status"] != "completed"][:3],
        "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "operations": per_op,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    budget = args.budget_mb or Settings().media_memory_budget_mb
    with servers(args.data_dir) as srv, tempfile.TemporaryDirectory(prefix="bench-media-") as scratch:
        folder = Path(scratch)
        inputs = make_inputs(folder, args.small)
        print_header("media worker: concurrency 1 against the memory budget", srv, {
            "inputs": ", ".join(f"{k} {w}x{h}" for k, (_, w, h, _d) in inputs.items()),
            "batch": f"{args.rounds} x {len(OPERATIONS)} operations", "budget": f"{budget:g} MB",
            "upper bound": f"concurrency {args.concurrency}",
        })  # fmt: skip
        redis = await prepare_redis(srv, [])
        async with fresh_database(srv, NAME) as (database_url, owner_url):
            owner = await connect_owner(owner_url)
            db = await Database.open(database_url, min_size=1, max_size=4)
            try:
                creator = await make_creator(owner, tier="studio")
                store = LocalMediaStore(folder / "media")
                assets = await upload(db, store, creator, inputs)
                # The teaser's clip length comes from the creator's default preset.
                await owner.execute(
                    "insert into media_presets (user_id, name, clip_duration_ms, is_default) values ($1, $2, $3, true)",
                    creator, "bench", 5000,
                )  # fmt: skip
                queue = JobQueue(db, redis, discover(Settings().job_packages))
                env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=srv.redis_url, LOG_FORMAT="json",
                           MEDIA_ROOT=str(folder / "media"), MEDIA_TMP_DIR=str(folder / "media-tmp"))  # fmt: skip
                env.pop("WORKER_DATABASE_URL", None)
                phases = []
                threads = args.threads or max(1, (os.cpu_count() or 1) // args.concurrency)
                for concurrency, phase_threads in ((1, 0), (args.concurrency, 0), (args.concurrency, threads)):
                    phases.append(await run_phase(db, owner, queue, env, creator, assets, args.rounds, concurrency,
                                                  budget, phase_threads))  # fmt: skip
            finally:
                await db.close()
                await owner.close()
                await redis.aclose()
    base, budgeted, threaded = phases
    rows = [[label, fmt(base["operations"][label]["peak_rss_mb"], 0), fmt(base["operations"][label]["estimate_mb"], 0),
             fmt(budgeted["operations"][label]["estimate_mb"], 0)] for label, *_ in OPERATIONS]  # fmt: skip
    print_table(["operation", "peak RSS MB", "estimate MB (no data)", "estimate MB (measured)"], rows)
    print()
    print_table(
        ["phase", "jobs", "seconds", "jobs/min", "most at once", "load before", "load after"],
        [[f"concurrency {p['concurrency']}" + (" (baseline)" if p is base else f", budget {budget:g} MB")
          + (f", ffmpeg -threads {p['ffmpeg_threads']}" if p["ffmpeg_threads"] else ""),
          fmt(p["jobs"]), fmt(p["seconds"]), fmt(p["jobs_per_min"], 2), fmt(p["most_at_once"]),
          fmt(p["load_1min_before"], 2), fmt(p["load_1min_after"], 2)] for p in phases],
    )  # fmt: skip
    speedup = budgeted["jobs_per_min"] / base["jobs_per_min"]
    threaded_speedup = threaded["jobs_per_min"] / base["jobs_per_min"]
    print(f"throughput within the budget: {speedup:.2f}x concurrency 1's, {threaded_speedup:.2f}x with ffmpeg "
          f"-threads {threaded['ffmpeg_threads']} per job (aim: 2x)")  # fmt: skip
    ok = all(p["completed_in_one_attempt"] == p["jobs"] for p in phases)
    verified = " / ".join(f"{p['completed_in_one_attempt']}/{p['jobs']} completed in one attempt" for p in phases)
    print("verified: " + verified + ("" if ok else f"  FAILED: {[e for p in phases for e in p['errors']]}"))
    path = write_results(NAME, {"small": args.small, "rounds": args.rounds, "budget_mb": budget,
                                "speedup": round(speedup, 2),
                                "speedup_threaded": round(threaded_speedup, 2), "phases": phases})  # fmt: skip
    print(f"results: {path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench media", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="the media queue's upper bound in phase two")
    parser.add_argument("--budget-mb", type=float, default=None, help="default: MEDIA_MEMORY_BUDGET_MB")
    parser.add_argument("--threads", type=int, default=0,
                        help="ffmpeg -threads per job in phase three (default: cores // --concurrency, at least 1)")
    parser.add_argument("--small", action="store_true", help="small inputs, for trying it out")
    parser.add_argument("--data-dir", type=Path, default=None)
    return asyncio.run(run(parser.parse_args(argv)))
