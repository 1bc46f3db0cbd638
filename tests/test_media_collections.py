"""PPV bundles: media_collections with their members in media_asset_usages (real PostgreSQL, RLS)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.domain import media
from geniehelper.runtime.queue import JobQueue
from tests.conftest import make_creator
from tests.media_harness import Media, job_record, output_of, run_media_jobs, upload
from tests.media_samples import photo_like, png_with_metadata


async def test_a_bundle_keeps_its_assets_in_order_with_a_cover_and_refuses_what_is_not_the_creators(
    db: Database, owner: asyncpg.Connection, media_dirs: Media
) -> None:
    m = media_dirs
    creator, other = await make_creator(owner), await make_creator(owner)
    assets = [
        (await upload(db, m, creator, png_with_metadata(m.samples / f"{i}.png"), "image", "image/png")).id
        for i in range(3)
    ]
    theirs = (await upload(db, m, other, png_with_metadata(m.samples / "x.png"), "image", "image/png")).id
    ordered = [assets[2], assets[0], assets[1]]
    async with db.creator_tx(creator) as conn:
        bundle = await media.bundle_collection(conn, creator, "Friday drop", ordered, price=Decimal("9.99"))
        assert await media.collection_members(conn, creator, bundle) == ordered
        for bad, reason in (([], "at least one"), ([assets[0], assets[0]], "appear once"),
                            ([assets[0], theirs], str(theirs)), ([uuid.uuid4()], "not assets of this creator")):
            with pytest.raises(ValueError, match=f"asset_ids: .*{reason}"):
                await media.bundle_collection(conn, creator, "bad", bad)
    row = await owner.fetchrow("select * from media_collections where id = $1", bundle)
    assert (row["user_id"], row["kind"], row["price"], row["cover_asset_id"]) == (
        creator, "ppv_bundle", Decimal("9.99"), assets[2])
    assert await owner.fetchval("select count(*) from media_collections where user_id = $1", creator) == 1
    async with db.creator_tx(other) as conn:  # RLS: another creator sees neither the bundle nor its members
        assert await media.collection_members(conn, other, bundle) == []
        assert await conn.fetchval("select count(*) from media_collections") == 0


async def test_a_fingerprinted_copy_and_a_preset_output_join_the_bundle_they_were_made_for(
    db: Database, owner: asyncpg.Connection, media_queue: JobQueue, database_url: str, redis_url: str, media_dirs: Media
) -> None:
    m = media_dirs
    creator = await make_creator(owner)
    fan = await owner.fetchval("insert into fan_profiles (user_id) values ($1) returning id", creator)
    cover = await upload(db, m, creator, png_with_metadata(m.samples / "cover.png"), "image", "image/png")
    photo = await upload(db, m, creator, photo_like(m.samples / "p.jpg"), "image", "image/jpeg")
    async with db.creator_tx(creator) as conn:
        bundle = await media.bundle_collection(conn, creator, "for one fan", [cover.id])
        await conn.execute("insert into media_presets (user_id, name, output_width, is_default)"
                           " values ($1, 'small', 320, true)", creator)  # fmt: skip
    marked = await media_queue.enqueue("media_fingerprint", {"asset_id": str(photo.id), "fan_profile_id": str(fan),
                                 "media_collection_id": str(bundle)}, user_id=creator)  # fmt: skip
    small = await media_queue.enqueue(
        "media_preset_apply", {"asset_id": str(photo.id), "media_collection_id": str(bundle)}, user_id=creator
    )
    nowhere = await media_queue.enqueue("media_fingerprint", {"asset_id": str(photo.id), "fan_profile_id": str(fan),
                                  "media_collection_id": str(uuid.uuid4())}, user_id=creator)  # fmt: skip
    await run_media_jobs(database_url, redis_url, m)

    marked_row, _ = await output_of(owner, m, marked.id)
    small_row, _ = await output_of(owner, m, small.id)
    async with db.creator_tx(creator) as conn:
        members = await media.collection_members(conn, creator, bundle)
    assert members[0] == cover.id and set(members[1:]) == {marked_row["id"], small_row["id"]} and len(members) == 3
    usages = await owner.fetch(  # the bundle member is also the copy made for its fan: two usage rows
        "select media_collection_id, fan_profile_id from media_asset_usages where media_asset_id = $1"
        " order by fan_profile_id nulls first", marked_row["id"],
    )  # fmt: skip
    assert [tuple(u) for u in usages] == [(bundle, None), (None, fan)]
    async with db.creator_tx(creator) as conn:  # exactly one target per row, still
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("insert into media_asset_usages (user_id, media_asset_id, media_collection_id,"
                               " fan_profile_id) values ($1, $2, $3, $4)", creator, photo.id, bundle, fan)  # fmt: skip
    record = await job_record(owner, nowhere.id)
    assert record["status"] == "failed" and "media_collection_id: media collection" in record["error"], record
    assert await owner.fetchval("select count(*) from media_assets where produced_by_job_id = $1", nowhere.id) == 0
