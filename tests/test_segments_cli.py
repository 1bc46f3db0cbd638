"""`geniehelper segments preview` and `geniehelper segments evaluate` as real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from geniehelper.db import Database
from geniehelper.segments import evaluation
from tests.conftest import make_creator
from tests.helpers import BIN
from tests.segment_fans import build_cast


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "geniehelper"), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def cli_env(project_env: dict[str, str], database_url: str, redis_url: str) -> dict[str, str]:
    return {**project_env, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json"}


async def counts(owner: asyncpg.Connection) -> tuple[Any, ...]:
    row = await owner.fetchrow(
        "select (select count(*) from fan_segments) as segments, (select count(*) from fan_segment_members) as members,"
        " (select count(*) from media_jobs) as jobs, (select max(updated_at) from fan_profiles) as profiles"
    )
    assert row is not None
    return tuple(row)


async def test_preview_counts_and_samples_a_rule_file_and_writes_nothing(
    db: Database, owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    fans = await build_cast(db, await make_creator(owner))
    await build_cast(db, await make_creator(owner))  # another creator's identical fans: never counted
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"any": [{"tag": {"name": "city"}}, {"lifecycle": {"in": ["vip"]}}]}))
    env = cli_env(project_env, database_url, redis_url)
    before = await counts(owner)

    shown = await asyncio.to_thread(run_cli, env, "segments", "preview", "--rules", str(rules), "--user",
                                    str(fans.user_id), "--sample", "2")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "3 fans match" and lines[1].split() == ["FAN", "NAME", "LIFECYCLE"] and len(lines) == 4
    assert {line.split()[0] for line in lines[2:]} <= {str(fans.ids[n]) for n in ("alice", "bob", "cara")}

    as_json = await asyncio.to_thread(run_cli, env, "segments", "preview", "--rules", "-", "--user",
                                      str(fans.user_id), "--json", stdin=rules.read_text())  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert found["count"] == 3 and fans.names(f["id"] for f in found["sample"]) == {"alice", "bob", "cara"}
    assert await counts(owner) == before  # nothing written


async def test_preview_prints_each_error_with_its_path_and_reason_and_exits_2(
    db: Database, owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    user_id = await make_creator(owner)
    env = cli_env(project_env, database_url, redis_url)
    rules = tmp_path / "bad.json"
    rules.write_text(json.dumps({"all": [{"spend": {"op": ">=", "value": 5}}, {"colour": "red"}]}))
    preview_args = ("segments", "preview", "--rules", str(rules), "--user", str(user_id))
    refused = await asyncio.to_thread(run_cli, env, *preview_args)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "geniehelper: invalid rules (2 errors):" in refused.stderr
    assert "  all[0].spend.op: Input should be 'eq', 'ne', 'lt', 'lte', 'gt' or 'gte'" in refused.stderr
    assert "  all[1]: unknown rule kind 'colour'" in refused.stderr
    assert "Traceback" not in refused.stderr

    rules.write_text("{not json")
    broken = await asyncio.to_thread(run_cli, env, *preview_args)
    assert broken.returncode == 2 and "(rules): not JSON" in broken.stderr

    missing = uuid.uuid4()
    rules.write_text(json.dumps({"segment": {"id": str(missing)}}))
    unknown = await asyncio.to_thread(run_cli, env, *preview_args)
    assert unknown.returncode == 2 and f"segment.id: segment {missing} does not exist" in unknown.stderr


async def test_evaluate_refreshes_a_segment_now_and_says_what_changed(
    db: Database, owner: asyncpg.Connection, project_env: dict[str, str], database_url: str, redis_url: str
) -> None:
    fans = await build_cast(db, await make_creator(owner))
    async with db.creator_tx(fans.user_id) as conn:
        segment = await evaluation.create_segment(conn, fans.user_id, "tagged", {"tag": {"name": "city"}})
    env = cli_env(project_env, database_url, redis_url)

    done = await asyncio.to_thread(run_cli, env, "segments", "evaluate", str(segment.id), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["name"], result["joined"], result["left"], result["member_count"]) == ("tagged", 2, 0, 2)
    members = await owner.fetch("select fan_profile_id from fan_segment_members where fan_segment_id = $1", segment.id)
    assert fans.names(r["fan_profile_id"] for r in members) == {"bob", "cara"}

    again = await asyncio.to_thread(run_cli, env, "segments", "evaluate", str(segment.id))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"segment 'tagged' ({segment.id}): 2 members, 0 joined, 0 left (rules version 1, ")

    nobody = await asyncio.to_thread(run_cli, env, "segments", "evaluate", str(uuid.uuid4()))
    assert nobody.returncode == 1 and "no segment" in nobody.stderr

    async with db.creator_tx(fans.user_id) as conn:  # written around the validation
        await conn.execute("update fan_segments set rules = $2 where id = $1", segment.id, {"tag": {"label": "x"}})
    refused = await asyncio.to_thread(run_cli, env, "segments", "evaluate", str(segment.id))
    assert refused.returncode == 2 and "tag.label: unknown field" in refused.stderr
    row = await owner.fetchrow("select evaluation_error, member_count from fan_segments where id = $1", segment.id)
    assert row is not None and "tag.label: unknown field" in row["evaluation_error"] and row["member_count"] == 2
