"""``quotaflow org create|list``: organizations."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from ._common import (
    CliError,
    add_command,
    add_group,
    connect,
    decimal_arg,
    print_json,
    render_table,
)

ORG_COLUMNS = [
    ("id", "id"),
    ("name", "name"),
    ("time_zone", "time zone"),
    ("display_currency", "currency"),
    ("credits_per_usd", "credits/USD"),
    ("owners", "owners"),
    ("members", "members"),
    ("created_at", "created (UTC)"),
]

_LIST_SQL = """
select o.id, o.name, o.time_zone, o.display_currency, o.credits_per_usd, o.created_at,
       count(m.user_id) filter (where m.role = 'owner') as owners,
       count(m.user_id) as members
from public.organizations o
left join public.organization_members m on m.organization_id = o.id
where %(id)s::uuid is null or o.id = %(id)s::uuid
group by o.id
order by o.created_at, o.name
"""


def user_uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a user UUID: {text!r}") from None


def require_auth_user(conn: Any, user_id: str) -> None:
    if not conn.execute("select 1 from auth.users where id = %s", (user_id,)).fetchone():
        raise CliError(f"no auth user {user_id}: the user must exist in auth.users (signed up)")


def cmd_org_create(args: argparse.Namespace) -> int:
    if args.rate is not None and not args.currency:
        raise CliError("--rate needs --currency (the display currency it converts USD to)")
    currency = args.currency.upper() if args.currency else None
    with connect(args) as conn, conn.transaction():
        if args.owner:
            require_auth_user(conn, args.owner)
        if currency and args.rate is None:
            known = conn.execute(
                "select 1 from public.currency_rates where currency = %s", (currency,)
            ).fetchone()
            if not known:
                raise CliError(
                    f"no exchange rate for {currency} yet: pass --rate (units of {currency}"
                    " one US dollar buys)"
                )
        values = {"name": args.name, "time_zone": args.time_zone, "display_currency": currency}
        if args.credits_per_usd is not None:
            values["credits_per_usd"] = args.credits_per_usd
        names = ", ".join(values)
        marks = ", ".join(f"%({k})s" for k in values)
        org = str(
            conn.execute(
                f"insert into public.organizations ({names}) values ({marks}) returning id",
                values,
            ).fetchone()["id"]
        )
        if args.rate is not None:
            conn.execute(
                "insert into public.currency_rates (currency, usd_rate, effective_from, source)"
                " values (%s, %s, now(), 'quotaflow org create')",
                (currency, args.rate),
            )
        if args.owner:
            conn.execute(
                "insert into public.organization_members (organization_id, user_id, role)"
                " values (%s, %s, 'owner')",
                (org, args.owner),
            )
        rows = conn.execute(_LIST_SQL, {"id": org}).fetchall()
    if args.json:
        print_json(rows[0])
        return 0
    print(f"organization {org} created")
    print(render_table(rows, ORG_COLUMNS))
    if not args.owner:
        print(f"It has no owner yet: quotaflow member add {org} USER_UUID --role owner")
    return 0


def cmd_org_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = conn.execute(_LIST_SQL, {"id": None}).fetchall()
    if args.json:
        print_json(rows)
    else:
        print(render_table(rows, ORG_COLUMNS))
    return 0


def register(sub: Any) -> None:
    group = add_group(sub, "org", "create and list organizations")
    p = add_command(group, "create", "create an organization", cmd_org_create)
    p.add_argument("name", help="its name (1 to 200 characters)")
    p.add_argument("--time-zone", default="UTC", help="IANA time zone of its days and quota"
                   " windows (default UTC)")  # fmt: skip
    p.add_argument("--currency", help="display currency of its reports (ISO 4217, e.g. BRL)")
    p.add_argument(
        "--rate",
        type=decimal_arg,
        help="units of --currency one US dollar buys, in force from now (needed when the"
        " currency has no rate yet)",
    )
    p.add_argument("--credits-per-usd", type=decimal_arg, help="credits per USD (default 1000)")
    p.add_argument("--owner", type=user_uuid, metavar="USER_UUID", help="its first owner")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(group, "list", "list every organization", cmd_org_list)
    p.add_argument("--json", action="store_true", help="print JSON")
