"""`geniehelper fans link --user ID A B` and `geniehelper fans unlink --user ID A B`.

Link confirms that two of a creator's fan platform accounts are one person and joins them under one
profile; unlink records that they are not and splits them again (docs/sync.md, "Identity links").
Both run in the creator's transaction as the app role, so RLS applies: another creator's account is
"no such account". Prints the profile of each account afterwards. Exit codes: 0 done; 1 no such
account; 2 a usage error (one line, no traceback). The database modules are imported inside.
"""

from __future__ import annotations

import argparse
import uuid
from typing import TYPE_CHECKING

from geniehelper.ops.cli import _database, _json, _Parser, _run, _say, _table, _uuid_of

if TYPE_CHECKING:
    from geniehelper.settings import Settings

PROFILES_OF = """
select a.id as account, a.platform, a.platform_fan_id, f.id as profile, f.lifetime_spend, f.platforms
  from fan_platform_accounts a
  join fan_profiles f on f.user_id = a.user_id and f.id = a.fan_profile_id
 where a.user_id = $1 and a.id = any($2::uuid[])
 order by a.platform, a.platform_fan_id
"""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fans = sub.add_parser("fans", help="fan identity: link two platform accounts as one person, or unlink them")
    actions = fans.add_subparsers(dest="fans_command", required=True, metavar="ACTION", parser_class=_Parser)
    for name, what in (("link", "join two accounts under one profile (a creator link)"),
                       ("unlink", "record two accounts as different people and split their profile")):  # fmt: skip
        action = actions.add_parser(name, help=f"{what} (exit 1: no such account)")
        action.add_argument("--user", required=True, type=_uuid_of("a creator id"), help="the creator's uuid")
        action.add_argument("a", metavar="ACCOUNT_A", type=_uuid_of("a fan platform account id"))
        action.add_argument("b", metavar="ACCOUNT_B", type=_uuid_of("a fan platform account id"))
        action.add_argument("--json", action="store_true")


def cmd_fans(args: argparse.Namespace, settings: Settings) -> int:
    if args.a == args.b:
        _say("account_b: the same account as account_a")
        return 2
    return _run(_change(args.fans_command, args.user, args.a, args.b, args.json, settings))


async def _change(action: str, user_id: uuid.UUID, a: uuid.UUID, b: uuid.UUID, as_json: bool,
                  settings: Settings) -> int:  # fmt: skip
    from geniehelper.domain import fan_identity

    async with _database(settings) as db:
        try:
            async with db.creator_tx(user_id) as conn:
                change = fan_identity.link_accounts if action == "link" else fan_identity.unlink_accounts
                done = await change(conn, user_id, a, b)
                rows = await conn.fetch(PROFILES_OF, user_id, [a, b])
        except fan_identity.UnknownAccount as exc:
            _say(str(exc))
            return 1
    if as_json:
        _json({"accounts_moved": done.accounts_moved, "profiles_created": done.profiles_created,
               "profiles_merged": done.profiles_merged, "accounts": [dict(r) for r in rows]})  # fmt: skip
        return 0
    print(f"{action}ed: {done.accounts_moved} account(s) moved, {done.profiles_created} profile(s) created, "
          f"{done.profiles_merged} merged")  # fmt: skip
    print(_table(["ACCOUNT", "PLATFORM", "FAN", "PROFILE", "SPEND", "PLATFORMS"],
                 [[str(r["account"]), r["platform"], r["platform_fan_id"], str(r["profile"]), str(r["lifetime_spend"]),
                   ",".join(r["platforms"])] for r in rows]))  # fmt: skip
    return 0
