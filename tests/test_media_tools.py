"""The media store and tools on their own: keys that cannot leave the root, write-once objects,
ffmpeg found and killed for real, work directories that do not outlive their attempt."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path

import psutil
import pytest

from geniehelper.media import images, video
from geniehelper.media.probe import NotMedia, parse_description
from geniehelper.media.store import LocalMediaStore, StorageConflict, UnsafeStorageKey, check_key
from geniehelper.media.tools import MediaTools, ToolTimeout, find_ffmpeg, run_tool
from tests.helpers import wait_until
from tests.media_samples import jpeg_with_metadata, video_with_metadata


def tools_in(tmp_path: Path, timeout_s: float = 60.0) -> MediaTools:
    return MediaTools(
        store=LocalMediaStore(tmp_path / "root"), ffmpeg=find_ffmpeg(None), tmp_root=tmp_path / "tmp",
        tool_timeout_s=timeout_s, max_image_pixels=10_000_000,
    )  # fmt: skip


@pytest.mark.parametrize(
    "key", ["../outside", "a/../../outside", "/etc/passwd", "a//b", ".hidden/x", "a/.partial", "", "a\\b", "a/b\x00"]
)
def test_keys_that_could_leave_the_root_or_hide_are_refused(key: str) -> None:
    with pytest.raises(UnsafeStorageKey):
        check_key(key)


async def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    store = LocalMediaStore(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not yours")
    (tmp_path / "root" / "creator").mkdir()
    (tmp_path / "root" / "creator" / "link").symlink_to(outside)
    with pytest.raises(UnsafeStorageKey, match="outside the media root"):
        await store.fetch("creator/link/secret.jpg", tmp_path)
    with pytest.raises(UnsafeStorageKey):
        await store.put(outside / "secret.jpg", "creator/link/copy.jpg")
    assert not (outside / "copy.jpg").exists()


async def test_objects_are_written_once_with_their_hash(tmp_path: Path) -> None:
    store = LocalMediaStore(tmp_path / "root")
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"original bytes")
    second.write_bytes(b"other bytes")
    stored = await store.put(first, "c/uploads/a.bin")
    assert stored.sha256 == hashlib.sha256(b"original bytes").hexdigest() and stored.byte_size == 14
    again = await store.put(first, "c/uploads/a.bin")  # same bytes: a retried job, fine
    assert again == stored
    with pytest.raises(StorageConflict):
        await store.put(second, "c/uploads/a.bin")
    assert (tmp_path / "root/c/uploads/a.bin").read_bytes() == b"original bytes"
    assert sorted(p.name for p in (tmp_path / "root/c/uploads").iterdir()) == ["a.bin"]  # no partial left
    assert await store.stat("c/uploads/a.bin") == stored
    assert (tmp_path / "root/c/uploads/a.bin").stat().st_mode & 0o222 == 0  # read-only
    assert await store.stat("c/uploads/none.bin") is None


def test_ffmpeg_is_the_configured_one_else_path_else_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="MEDIA_FFMPEG"):
        find_ffmpeg(str(tmp_path / "no-such-ffmpeg"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on PATH: the wheel's
    wheel = find_ffmpeg(None)
    assert "imageio_ffmpeg" in wheel and os.access(wheel, os.X_OK)
    shim = tmp_path / "ffmpeg"
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    assert find_ffmpeg(None) == str(shim)  # the system's wins when there is one
    assert find_ffmpeg(wheel) == wheel


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


async def test_an_ffmpeg_past_its_timeout_is_killed(tmp_path: Path) -> None:
    tools = tools_in(tmp_path, timeout_s=1.0)
    endless = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-f", "null", "-"]
    with pytest.raises(ToolTimeout, match="killed"):
        await tools.ffmpeg_run(endless)
    assert _ffmpeg_children() == []


async def test_a_cancelled_job_kills_its_ffmpeg(tmp_path: Path) -> None:
    tools = tools_in(tmp_path)
    task = asyncio.create_task(tools.ffmpeg_run(["-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-f", "null", "-"]))
    assert await asyncio.to_thread(wait_until, lambda: bool(_ffmpeg_children()), 10.0)
    pid = _ffmpeg_children()[0].pid
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert _ffmpeg_children() == []


async def test_a_failing_tool_says_why(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(Exception, match="exited with 1") as failed:
        await run_tool([find_ffmpeg(None), "-hide_banner", "-i", str(tmp_path / "junk.mp4"), "-f", "null", "-"],
                       timeout_s=30)  # fmt: skip
    assert "Invalid data" in str(failed.value)
    description = await tools_in(tmp_path).ffmpeg_describe(tmp_path / "junk.mp4")
    with pytest.raises(NotMedia, match="Invalid data"):
        parse_description(description)


async def test_work_dirs_are_removed_on_failure_and_earlier_attempts_leftovers_go_too(tmp_path: Path) -> None:
    tools = tools_in(tmp_path)
    record = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with tools.work_dir(record, 1) as work:
            (work / "half-written.mp4").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not (tmp_path / "tmp" / f"job-{record}").exists()
    leftover = tmp_path / "tmp" / f"job-{record}" / "a1"  # a worker killed with -9 mid-attempt 1
    leftover.mkdir(parents=True)
    (leftover / "partial.mp4").write_bytes(b"x")
    async with tools.work_dir(record, 2) as work:
        assert not leftover.exists() and work.name == "a2"
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_probe_reads_a_real_video_and_image(tmp_path: Path) -> None:
    tools = tools_in(tmp_path)
    clip = video_with_metadata(tmp_path / "in.mp4", seconds=2, width=320, height=240)
    probe = parse_description(await tools.ffmpeg_describe(clip))
    assert probe.video is not None and (probe.video.width, probe.video.height, probe.video.fps) == (320, 240, 25.0)
    assert probe.audio is not None and probe.audio.codec == "aac"
    assert probe.duration_s == pytest.approx(2.0, abs=0.05)
    assert probe.tags["title"] == "GH-SECRET-TITLE" and probe.tags["location"] == "+48.8582+002.2945/"
    assert [c.tags["title"] for c in probe.chapters] == ["GH-CHAPTER-ONE", "GH-CHAPTER-TWO"]
    assert probe.video.tags["name"] == "GH-STREAM-TAG"
    assert await tools.count_frames(clip) == 50
    found = images.probe(jpeg_with_metadata(tmp_path / "in.jpg", width=80, height=60), 10_000_000)
    assert (found.format, found.width, found.height, found.orientation) == ("JPEG", 60, 80, 6)
    assert {"exif", "gps", "xmp", "iptc", "comment"} <= set(found.metadata)
    assert video.fitted_size(320, 240, 161, None) == (160, 120)


async def test_an_encode_limited_to_one_ffmpeg_thread_still_makes_every_frame(tmp_path: Path) -> None:
    """MEDIA_FFMPEG_THREADS puts -filter_threads and the encoder's -threads into every ffmpeg run;
    ffmpeg accepts them where they go (their effect on speed is measured in `bench media`)."""
    tools = tools_in(tmp_path)
    tools.ffmpeg_threads = 1
    source = video_with_metadata(tmp_path / "in.mp4", seconds=1, width=320, height=240)
    probe = parse_description(await tools.ffmpeg_describe(source))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    made = await video.encode(tools, source, out_dir, probe, max_width=256, fingerprint_for=uuid.uuid4())
    assert (made.width, made.height) == (256, 192) and await tools.count_frames(made.path) == 25
