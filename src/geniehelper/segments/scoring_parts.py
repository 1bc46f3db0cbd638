"""score_fans for a large creator: the fans scored in parts by id range, a few parts at once.

`scoring.score_fans` scores every fan in one statement, one transaction. For a creator with more
than `SCORE_PART_FANS` fans, `score_in_parts` splits the fans by id into ranges of that many and
scores each range with the same statement (`scoring.score_part`) in its own creator transaction,
`SCORE_PARALLEL` of them at once, each on its own connection. Every per-fan aggregate and
intermediate result of a part then fits in the statement's working memory (one statement over
1,000,000 fans spilled them to disk: bench/README.md, "segments"), and two parts use two cores.

Consistency (docs/scoring.md, "In parts"): a fan's score reads only that fan's rows, and each fan is
in exactly one part, so each score is computed from one snapshot of its fan's ledgers, as in the one
statement; fans of different parts are read at moments up to the run's length apart. A part that
fails leaves the parts committed before it (their fans hold their new scores, which a rerun finds
unchanged and does not rewrite); the run is recorded in fan_scoring only after every part committed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from uuid import UUID

from geniehelper.segments import scoring

SCORE_PART_FANS = 100_000  # fans per part
SCORE_PARALLEL = 2  # parts scored at once (each on its own connection)

# The first fan id of each part but the first: every `$2`-th of the creator's fans by id (merged ones
# included: they only shift a boundary). An index-only pass over (user_id, id).
PART_STARTS = """
select coalesce(array_agg(id order by id), '{}')::uuid[]
  from (select id, row_number() over (order by id) as n from fan_profiles where user_id = $1) f
 where f.n % $2 = 1 and f.n > 1
"""


def part_bounds(starts: list[UUID]) -> list[tuple[UUID, UUID | None]]:
    """[lo, hi) ranges covering every id: from the lowest id to the first start, start to start, the
    last start to no bound."""
    edges: list[UUID | None] = [scoring.NIL, *starts, None]
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if lo is not None]


async def score_in_parts(
    open_tx: Callable[[], AbstractAsyncContextManager[Any]], user_id: UUID, *,
    part_fans: int = SCORE_PART_FANS, parallel: int = SCORE_PARALLEL,
) -> scoring.ScoreRun:  # fmt: skip
    """Score every fan of the creator, `open_tx()` giving each creator transaction: in one transaction
    (as `scoring.score_fans`) when the fans fit in one part, else part by part, `parallel` at once."""
    started = time.monotonic()
    async with open_tx() as conn:
        starts: list[UUID] = list(await conn.fetchval(PART_STARTS, user_id, part_fans))
        if not starts:
            return await scoring.score_fans(conn, user_id)
    pending = part_bounds(starts)
    runs: list[scoring.ScoreRun] = []

    async def work() -> None:
        while pending:
            lo, hi = pending.pop(0)
            async with open_tx() as conn:
                runs.append(await scoring.score_part(conn, user_id, lo, hi))

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, min(parallel, len(pending)))):
            group.create_task(work())
    scored = sum(r.scored for r in runs)
    async with open_tx() as conn:
        await scoring.record_run(conn, user_id, scored)
    return scoring.ScoreRun(
        scored, sum(r.profiles_updated for r in runs), sum(r.engagement_updated for r in runs), scoring.MODEL_VERSION,
        round((time.monotonic() - started) * 1000), sum(r.written for r in runs),
    )  # fmt: skip
