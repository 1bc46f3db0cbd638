"""PPV bundles: media_collections with their members in media_asset_usages (real PostgreSQL, RLS)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.domain import media
from tests.conftest import make_creator
from tests.media_harness import Media, make_media, upload
from tests.media_samples import png_with_metadata


@pytest.fixture
def media_dirs(tmp_path: Path) -> Media:
    return make_media(tmp_path)


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
