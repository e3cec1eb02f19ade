"""``quotaflow member add|remove|list``: who belongs to an organization, with which role.

The database keeps every organization's last owner (a trigger): removing or demoting them is
refused here as everywhere else."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    CliError,
    add_command,
    add_group,
    connect,
    print_json,
    render_table,
    resolve_org,
)
from .org import require_auth_user, user_uuid

ROLES = ("owner", "admin", "member")
MEMBER_COLUMNS = [("user_id", "user"), ("email", "email"), ("role", "role"),
                  ("created_at", "since (UTC)")]  # fmt: skip


def cmd_member_add(args: argparse.Namespace) -> int:
    """Adds the user, or changes their role when they are a member already."""
    with connect(args) as conn, conn.transaction():
        org = resolve_org(conn, args.org)
        require_auth_user(conn, args.user_id)
        before = conn.execute(
            "select role from public.organization_members"
            " where organization_id = %s and user_id = %s for update",
            (org, args.user_id),
        ).fetchone()
        conn.execute(
            "insert into public.organization_members (organization_id, user_id, role)"
            " values (%s, %s, %s)"
            " on conflict (organization_id, user_id) do update set role = excluded.role",
            (org, args.user_id, args.role),
        )
    if before is None:
        print(f"{args.user_id} added to {org} as {args.role}")
    elif before["role"] == args.role:
        print(f"{args.user_id} is already {args.role} of {org}")
    else:
        print(f"{args.user_id}: {before['role']} -> {args.role} in {org}")
    return 0


def cmd_member_remove(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        gone = conn.execute(
            "delete from public.organization_members where organization_id = %s and user_id = %s"
            " returning role",
            (org, args.user_id),
        ).fetchone()
    if gone is None:
        raise CliError(f"{args.user_id} is not a member of {org}")
    print(f"{args.user_id} ({gone['role']}) removed from {org}")
    return 0


def cmd_member_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        rows = conn.execute(
            "select m.user_id, u.email, m.role, m.created_at"
            " from public.organization_members m left join auth.users u on u.id = m.user_id"
            " where m.organization_id = %s"
            " order by array_position(array['owner', 'admin', 'member'], m.role), u.email,"
            " m.user_id",
            (org,),
        ).fetchall()
    if args.json:
        print_json(rows)
    else:
        print(render_table(rows, MEMBER_COLUMNS))
    return 0


def register(sub: Any) -> None:
    group = add_group(sub, "member", "add, remove and list an organization's members")
    p = add_command(group, "add", "add a member, or change a member's role", cmd_member_add)
    p.add_argument("org", help="organization id or exact name")
    p.add_argument("user_id", type=user_uuid, metavar="USER_UUID", help="the Supabase auth user")
    p.add_argument("--role", choices=ROLES, default="member", help="default member")
    p = add_command(group, "remove", "remove a member (never the last owner)", cmd_member_remove)
    p.add_argument("org", help="organization id or exact name")
    p.add_argument("user_id", type=user_uuid, metavar="USER_UUID")
    p = add_command(group, "list", "list an organization's members", cmd_member_list)
    p.add_argument("org", help="organization id or exact name")
    p.add_argument("--json", action="store_true", help="print JSON")
