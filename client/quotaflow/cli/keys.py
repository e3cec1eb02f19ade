"""``quotaflow keys create|revoke|list``: organization API keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..server.auth import create_api_key, list_api_keys, revoke_api_key
from ._common import (
    CliError,
    add_command,
    add_group,
    connect,
    fmt,
    instant,
    print_json,
    render_table,
    resolve_org,
)


def cmd_keys_create(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        key_id, key = create_api_key(conn, org, args.name, expires_at=args.expires_at)
    if args.json:
        print_json({"key_id": key_id, "organization_id": org, "name": args.name, "key": key})
        return 0
    print(f"API key {key_id} created for organization {org}")
    print(f"  name: {args.name}")
    if args.expires_at:
        print(f"  expires: {fmt(args.expires_at)}")
    print(f"  key:  {key}")
    print("Store the key now: it is shown once and cannot be recovered.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        org = resolve_org(conn, args.org) if args.org else None
        revoked = revoke_api_key(conn, args.key_id, organization_id=org)
    if not revoked:
        raise CliError(f"no active API key {args.key_id}" + (f" in {org}" if org else ""))
    print(f"API key {args.key_id} revoked")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        keys = list_api_keys(conn, resolve_org(conn, args.org))
    rows = [
        {
            "key_id": k.key_id,
            "name": k.name,
            "key_prefix": k.key_prefix,
            "created_at": k.created_at,
            "expires_at": k.expires_at,
            "last_used_at": k.last_used_at,
            "status": "active" if k.active else "revoked" if k.revoked_at else "expired",
        }
        for k in keys
    ]
    if args.json:
        print_json(rows)
    else:
        print(
            render_table(
                rows,
                [
                    ("key_id", "id"), ("name", "name"), ("key_prefix", "prefix"),
                    ("status", "status"), ("created_at", "created (UTC)"),
                    ("expires_at", "expires"), ("last_used_at", "last used"),
                ],
            )
        )  # fmt: skip
    return 0


def register(sub: Any) -> None:
    ksub = add_group(sub, "keys", "organization API keys")
    p = add_command(ksub, "create", "create an API key (shown once)", cmd_keys_create)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--expires-at", type=instant, help="ISO date/time the key stops working")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(ksub, "revoke", "revoke an API key at once", cmd_keys_revoke)
    p.add_argument("key_id", help="the key's id (from keys create / keys list)")
    p.add_argument("--org", help="only if it belongs to this organization")
    p = add_command(ksub, "list", "list an organization's API keys", cmd_keys_list)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--json", action="store_true", help="print JSON")
