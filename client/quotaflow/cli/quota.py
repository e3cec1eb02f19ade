"""``quotaflow quota list|set``: an organization's quotas."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    CliError,
    add_command,
    add_group,
    connect,
    decimal_arg,
    print_json,
    render_table,
    resolve_org,
    thresholds_arg,
)

QUOTA_COLUMNS = [
    ("quota_id", "id"),
    ("name", "name"),
    ("quota_type", "window"),
    ("metric", "metric"),
    ("enforcement", "enforcement"),
    ("scope", "scope"),
    ("quota_limit", "limit"),
    ("current_usage", "used"),
    ("reserved", "reserved"),
    ("remaining", "remaining"),
    ("percent_used", "% used"),
    ("reset_at", "resets (UTC)"),
]


def _scope(row: dict[str, Any]) -> str:
    parts = [
        f"{label}={row[key]}"
        for key, label in (("user_id", "user"), ("provider", "provider"), ("model", "model"))
        if row.get(key)
    ]
    return " ".join(parts) or "organization"


def _quota_rows(conn: Any, org: str) -> list[dict[str, Any]]:
    rows = conn.execute("select * from public.get_quota_status(%s)", (org,)).fetchall()
    thresholds = {
        r["id"]: r["alert_thresholds"]
        for r in conn.execute(
            "select id, alert_thresholds from public.usage_quotas where organization_id = %s",
            (org,),
        )
    }
    return [
        {**r, "scope": _scope(r), "alert_thresholds": thresholds.get(r["quota_id"])} for r in rows
    ]


def cmd_quota_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        rows = _quota_rows(conn, resolve_org(conn, args.org))
    if args.json:
        print_json(rows)
    else:
        print(render_table(rows, QUOTA_COLUMNS))
    return 0


def cmd_quota_set(args: argparse.Namespace) -> int:
    """Creates the quota of this scope, or changes the one that exists (or --id)."""
    from ..models import normalise_provider

    provider = normalise_provider(args.provider) if args.provider else None
    model = args.model.strip().lower() if args.model else None
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        if args.id:
            found = conn.execute(
                "select id from public.usage_quotas where id = %s and organization_id = %s",
                (args.id, org),
            ).fetchall()
            if not found:
                raise CliError(f"no quota {args.id} in organization {org}")
        else:
            found = conn.execute(
                "select id from public.usage_quotas where organization_id = %s"
                " and quota_type = %s and metric = %s and user_id is not distinct from %s"
                " and provider is not distinct from %s and model is not distinct from %s",
                (org, args.type, args.metric, args.user, provider, model),
            ).fetchall()
            if len(found) > 1:
                raise CliError(
                    f"{len(found)} quotas have this scope; choose one with --id"
                    " (see quotaflow quota list)"
                )
        values: dict[str, Any] = {"quota_limit": args.limit}
        for key, value in (
            ("enforcement", args.enforcement),
            ("name", args.name),
            ("time_zone", args.time_zone),
            ("alert_thresholds", args.thresholds),
        ):
            if value is not None:
                values[key] = value
        if found:
            quota_id = str(found[0]["id"])
            if args.id:
                values.update(quota_type=args.type, metric=args.metric)
                values.update(user_id=args.user, provider=provider, model=model)
            sets = ", ".join(f"{k} = %({k})s" for k in values)
            conn.execute(
                f"update public.usage_quotas set {sets} where id = %(id)s",
                {**values, "id": quota_id},
            )
            action = "updated"
        else:
            values.update(
                organization_id=org, quota_type=args.type, metric=args.metric,
                user_id=args.user, provider=provider, model=model,
                enforcement=args.enforcement or "hard",
            )  # fmt: skip
            names = ", ".join(values)
            marks = ", ".join(f"%({k})s" for k in values)
            row = conn.execute(
                f"insert into public.usage_quotas ({names}) values ({marks}) returning id", values
            ).fetchone()
            quota_id = str(row["id"])
            action = "created"
        rows = [r for r in _quota_rows(conn, org) if str(r["quota_id"]) == quota_id]
    print(f"quota {quota_id} {action}")
    print(render_table(rows, QUOTA_COLUMNS))
    return 0


def register(sub: Any) -> None:
    qsub = add_group(sub, "quota", "show and set quotas")
    p = add_command(qsub, "list", "list an organization's quotas with usage and reset time",
                    cmd_quota_list)  # fmt: skip
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(
        qsub,
        "set",
        "create the quota of a scope, or change the existing one",
        cmd_quota_set,
    )
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--id", help="change this quota (scope options then replace its scope)")
    p.add_argument(
        "--type",
        "--window",
        dest="type",
        required=True,
        choices=["minute", "hourly", "daily", "weekly", "monthly", "total"],
        help="the window",
    )
    p.add_argument("--metric", default="usd", choices=["usd", "tokens", "requests"])
    p.add_argument("--limit", required=True, type=decimal_arg, help="the limit, in the metric")
    p.add_argument("--enforcement", choices=["hard", "soft"], help="default hard")
    p.add_argument("--user", help="only this app user id")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--model", help="only this model")
    p.add_argument("--name", help="a label")
    p.add_argument("--time-zone", help="IANA time zone of the window (default: the org's)")
    p.add_argument(
        "--thresholds",
        type=thresholds_arg,
        help="alert thresholds, fractions or percents: 0.8,1.0 or 50%%,90%% ('' = none)",
    )
