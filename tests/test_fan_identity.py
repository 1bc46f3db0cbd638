"""Identity links (geniehelper.domain.fan_identity) against real PostgreSQL, as the app role in creator_tx (RLS)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from geniehelper.db import Database
from geniehelper.domain import fan_crm, fan_identity, fan_sync
from geniehelper.domain.fan_sync import AccountRow, MessageRow, TransactionRow
from tests.conftest import make_creator
from tests.helpers import BIN

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _fan(conn: asyncpg.Connection, creator: uuid.UUID, platform: str, fan_id: str, seen: datetime,
               spend: list[str], messages: int) -> fan_crm.FanPlatformAccount:  # fmt: skip
    account = await fan_crm.upsert_platform_account(conn, creator, platform, fan_id, fan_id, seen_at=seen)
    await fan_sync.merge_transactions(conn, creator, platform, [
        TransactionRow(f"{fan_id}-t{i}", fan_id, "tip", Decimal(a), "USD", seen + timedelta(hours=i + 1))
        for i, a in enumerate(spend)
    ])  # fmt: skip
    await fan_sync.flush_profile_figures(conn, creator)  # as the end of a sync's pass over transactions
    await fan_sync.merge_messages(conn, creator, platform, [
        MessageRow(f"{fan_id}-m{i}", fan_id, "inbound", "hi", seen + timedelta(minutes=i + 1)) for i in range(messages)
    ])  # fmt: skip
    return account


async def _profile(conn: asyncpg.Connection, creator: uuid.UUID, account: uuid.UUID) -> fan_crm.FanProfile:
    profile_id = await conn.fetchval("select fan_profile_id from fan_platform_accounts where id = $1", account)
    found = await fan_crm.get_fan_profile(conn, creator, profile_id)
    assert found is not None
    return found


async def test_link_joins_two_platforms_under_one_profile_and_unlink_splits_them(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        of = await _fan(conn, creator, "onlyfans", "of-1", T0, ["10.00", "5.50"], 2)
        fs = await _fan(conn, creator, "fansly", "fs-1", T0 + timedelta(days=3), ["20.00"], 3)
        assert of.fan_profile_id != fs.fan_profile_id  # two people until linked

        done = await fan_identity.link_accounts(conn, creator, of.id, fs.id)
        assert done == fan_identity.Regrouped(accounts_moved=1, profiles_created=0, profiles_merged=1)
        joined = await _profile(conn, creator, fs.id)
        assert joined.id == of.fan_profile_id  # the older profile survives
        assert (await _profile(conn, creator, of.id)).id == joined.id
        assert joined.lifetime_spend == Decimal("35.50")
        assert joined.message_count == 5
        assert joined.platforms == ["fansly", "onlyfans"]
        assert joined.first_seen_at == T0
        assert joined.last_seen_at == T0 + timedelta(days=3, hours=1)  # the fansly tip: the last activity
        assert joined.last_purchase_at == T0 + timedelta(days=3, hours=1)
        gone = await fan_crm.get_fan_profile(conn, creator, fs.fan_profile_id)
        assert gone is not None and gone.status == "merged" and gone.merged_into_id == joined.id
        assert gone.lifetime_spend == 0 and gone.platforms == []
        moved = await conn.fetchval(
            "select count(*) from fan_transactions where fan_platform_account_id = $1 and fan_profile_id = $2",
            fs.id, joined.id,
        )  # fmt: skip
        assert moved == 1
        # a later synced purchase on the fansly account lands on the joined profile
        await fan_sync.merge_transactions(conn, creator, "fansly", [
            TransactionRow("fs-1-late", "fs-1", "tip", Decimal("1.00"), "USD", T0 + timedelta(days=4))
        ])  # fmt: skip
        assert await fan_sync.flush_profile_figures(conn, creator) == 1
        assert (await _profile(conn, creator, fs.id)).lifetime_spend == Decimal("36.50")

        split = await fan_identity.unlink_accounts(conn, creator, of.id, fs.id)
        assert split == fan_identity.Regrouped(accounts_moved=1, profiles_created=1, profiles_merged=0)
        kept, off = await _profile(conn, creator, of.id), await _profile(conn, creator, fs.id)
        assert kept.id == of.fan_profile_id and off.id not in (of.fan_profile_id, fs.fan_profile_id)
        assert (kept.lifetime_spend, kept.message_count, kept.platforms) == (Decimal("15.50"), 2, ["onlyfans"])
        assert (off.lifetime_spend, off.message_count, off.platforms) == (Decimal("21.00"), 3, ["fansly"])
        assert off.status == "active" and off.last_seen_at == T0 + timedelta(days=4)
        assert off.first_seen_at == T0 + timedelta(days=3)
        link = await conn.fetchval("select status from fan_identity_links where user_id = $1", creator)
        assert link == "rejected"
    profiles = await owner.fetchval(
        "select count(*) from fan_profiles where user_id = $1 and status = 'active'", creator
    )
    assert profiles == 2


async def test_links_are_transitive_and_an_unlink_in_the_middle_splits_three_ways(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator = await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        a = await _fan(conn, creator, "onlyfans", "a", T0, ["1.00"], 0)
        b = await _fan(conn, creator, "fansly", "b", T0 + timedelta(days=1), ["2.00"], 0)
        c = await _fan(conn, creator, "patreon", "c", T0 + timedelta(days=2), ["4.00"], 0)
        await fan_identity.link_accounts(conn, creator, a.id, b.id)
        await fan_identity.link_accounts(conn, creator, c.id, b.id)
        one = {(await _profile(conn, creator, x.id)).id for x in (a, b, c)}
        assert one == {a.fan_profile_id}
        assert (await _profile(conn, creator, c.id)).lifetime_spend == Decimal("7.00")

        await fan_identity.unlink_accounts(conn, creator, a.id, b.id)  # b-c still linked
        pa, pb, pc = [await _profile(conn, creator, x.id) for x in (a, b, c)]
        assert pa.id == a.fan_profile_id and pb.id == pc.id != pa.id
        assert (pa.lifetime_spend, pb.lifetime_spend) == (Decimal("1.00"), Decimal("6.00"))
        assert pb.platforms == ["fansly", "patreon"]


async def test_verified_email_match_links_automatically_but_not_a_rejected_pair(
    db: Database, owner: asyncpg.Connection
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(other) as conn:  # another creator's fan with the same address stays apart
        await fan_sync.ensure_accounts(conn, other, "fansly", await _connection(conn, other, "fansly"),
                                       [AccountRow("x", "x", T0, {"verified_email": "Bo@Example.com"})])  # fmt: skip
    async with db.creator_tx(creator) as conn:
        of_conn, fs_conn = await _connection(conn, creator, "onlyfans"), await _connection(conn, creator, "fansly")
        await fan_sync.ensure_accounts(
            conn,
            creator,
            "onlyfans",
            of_conn,
            [
                AccountRow("of-bo", "bo", T0, {"verified_email": "bo@example.com"}),
                AccountRow("of-cy", "cy", T0, {"verified_email": "cy@example.com"}),
            ],
        )
        await fan_sync.ensure_accounts(
            conn,
            creator,
            "fansly",
            fs_conn,
            [
                AccountRow("fs-bo", "bo2", T0, {"verified_email": "Bo@Example.com"}),
                AccountRow("fs-zz", "zz", T0, {"verified_email": "zz@example.com"}),
            ],
        )
        done = await fan_identity.link_verified_matches(conn, creator, "fansly", ["fs-bo", "fs-zz"])
        assert done.profiles_merged == 1
        of_bo = await fan_crm.get_platform_account(conn, creator, "onlyfans", "of-bo")
        fs_bo = await fan_crm.get_platform_account(conn, creator, "fansly", "fs-bo")
        assert of_bo is not None and fs_bo is not None and of_bo.fan_profile_id == fs_bo.fan_profile_id
        source = await conn.fetchval("select source from fan_identity_links where status = 'confirmed'")
        assert source == "rule"

        await fan_identity.unlink_accounts(conn, creator, of_bo.id, fs_bo.id)
        again = await fan_identity.link_verified_matches(conn, creator, "onlyfans", ["of-bo", "of-cy"])
        assert again == fan_identity.Regrouped(0, 0, 0)  # the creator's "not the same person" stands
        assert await conn.fetchval("select count(distinct fan_profile_id) from fan_platform_accounts") == 4
    assert await owner.fetchval("select count(*) from fan_identity_links where user_id = $1", other) == 0


async def test_bad_links_are_refused_with_the_field_named(db: Database, owner: asyncpg.Connection) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(other) as conn:
        foreign = await _fan(conn, other, "fansly", "f", T0, [], 0)
    async with db.creator_tx(creator) as conn:
        mine = await _fan(conn, creator, "onlyfans", "m", T0, [], 0)
        with pytest.raises(ValueError, match="account_b: an account cannot be linked to itself"):
            await fan_identity.link_accounts(conn, creator, mine.id, mine.id)
        with pytest.raises(fan_identity.UnknownAccount, match=str(foreign.id)):  # RLS hides the other creator's
            await fan_identity.link_accounts(conn, creator, mine.id, foreign.id)
    assert (
        await owner.fetchval(
            "select count(*) from fan_identity_links where user_id = any($1::uuid[])", [creator, other]
        )
        == 0
    )


async def _connection(conn: asyncpg.Connection, user_id: uuid.UUID, platform: str) -> uuid.UUID:
    connection_id: uuid.UUID = await conn.fetchval(
        "insert into platform_connections (user_id, platform, external_account_id) values ($1, $2, $3) returning id",
        user_id, platform, uuid.uuid4().hex,
    )  # fmt: skip
    return connection_id


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "geniehelper"), *args], env=env, capture_output=True, text=True, timeout=60)


async def test_the_fans_link_and_unlink_commands_as_real_processes(
    db: Database, owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    creator, other = await make_creator(owner), await make_creator(owner)
    async with db.creator_tx(creator) as conn:
        of = await _fan(conn, creator, "onlyfans", "cli-of", T0, ["3.00"], 1)
        fs = await _fan(conn, creator, "fansly", "cli-fs", T0 + timedelta(days=1), ["4.00"], 0)
    env = {**project_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json"}

    linked = await asyncio.to_thread(_run_cli, env, "fans", "link", "--user", str(creator), str(of.id), str(fs.id),
                                     "--json")  # fmt: skip
    assert linked.returncode == 0, linked.stderr
    shown = json.loads(linked.stdout)
    assert shown["profiles_merged"] == 1 and {a["profile"] for a in shown["accounts"]} == {str(of.fan_profile_id)}
    assert {a["lifetime_spend"] for a in shown["accounts"]} == {"7.00"}

    split = await asyncio.to_thread(_run_cli, env, "fans", "unlink", "--user", str(creator), str(of.id), str(fs.id))
    assert split.returncode == 0, split.stderr
    assert split.stdout.startswith("unlinked: 1 account(s) moved, 1 profile(s) created")
    async with db.creator_tx(creator) as conn:
        assert (await _profile(conn, creator, of.id)).lifetime_spend == Decimal("3.00")
        assert (await _profile(conn, creator, fs.id)).lifetime_spend == Decimal("4.00")

    foreign = await asyncio.to_thread(_run_cli, env, "fans", "link", "--user", str(other), str(of.id), str(fs.id))
    assert foreign.returncode == 1 and "no fan platform account" in foreign.stderr  # RLS: not the creator's
    same = await asyncio.to_thread(_run_cli, env, "fans", "link", "--user", str(creator), str(of.id), str(of.id))
    assert same.returncode == 2 and "account_b" in same.stderr
    bad = await asyncio.to_thread(_run_cli, env, "fans", "link", "--user", str(creator), "nope", str(of.id))
    assert bad.returncode == 2 and "'nope' is not a fan platform account id" in bad.stderr
