"""``quotaflow report``: an organization's usage over a period."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    add_command,
    add_range,
    connect,
    fmt,
    print_json,
    render_table,
    resolve_org,
    time_range,
)

SECTIONS = ("summary", "model", "user", "day")


def cmd_report(args: argparse.Namespace) -> int:
    start, end = time_range(args)
    sections = args.section or list(SECTIONS)
    out: dict[str, Any] = {}
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        org_row = conn.execute(
            "select name, coalesce(display_currency, 'USD') as currency"
            " from public.organizations where id = %s",
            (org,),
        ).fetchone()
        org_name, currency = org_row["name"], org_row["currency"]
        if "summary" in sections:
            out["summary"] = conn.execute(
                "select * from public.usage_summary(%s, %s, %s)", (org, start, end)
            ).fetchone()
        if "model" in sections:
            out["model"] = conn.execute(
                "select * from public.model_performance(%s, %s, %s)", (org, start, end)
            ).fetchall()
        if "user" in sections:
            out["user"] = conn.execute(
                "select * from public.top_users(%s, %s, %s, %s)", (org, start, end, args.top)
            ).fetchall()
        if "day" in sections:
            out["day"] = conn.execute(
                "select * from public.usage_by_day(%s, %s, %s)", (org, start, end)
            ).fetchall()
    if args.json:
        print_json({"organization_id": org, "start": start, "end": end, **out})
        return 0
    print(f"Usage of {org_name} ({org})")
    print(f"from {fmt(start)} to {fmt(end)}")
    summary = out.get("summary")
    if summary is not None:
        print("\nSummary")
        items = [
            ("requests", summary["requests"]),
            ("successful", summary["successful_requests"]),
            ("failed", summary["failed_requests"]),
            ("input tokens", summary["input_tokens"]),
            ("output tokens", summary["output_tokens"]),
            ("cached input tokens", summary["cached_input_tokens"]),
            ("total tokens", summary["total_tokens"]),
            ("cost (USD)", summary["cost_usd"]),
            (f"cost ({currency})", summary["cost_display"]),
            ("credits", summary["credits"]),
            ("average cost (USD)", summary["avg_cost_usd"]),
            ("average latency (ms)", summary["avg_latency_ms"]),
        ]
        if currency == "USD":
            items.pop(8)
        width = max(len(k) for k, _ in items)
        for key, value in items:
            if value is None:
                shown = "n/a (no exchange rate)" if key == f"cost ({currency})" else "-"
            else:
                shown = fmt(value)
            print(f"  {key.ljust(width)}  {shown}")
    if "model" in out:
        print("\nBy model")
        print(
            render_table(
                out["model"],
                [
                    ("provider", "provider"), ("model", "model"), ("requests", "requests"),
                    ("error_rate", "error rate"), ("total_tokens", "tokens"),
                    ("cost_usd", "cost USD"), ("avg_cost_usd", "avg cost"),
                    ("avg_latency_ms", "avg ms"), ("p50_latency_ms", "p50 ms"),
                    ("p95_latency_ms", "p95 ms"),
                ],
            )
        )  # fmt: skip
    if "user" in out:
        print(f"\nBy user (top {args.top})")
        print(
            render_table(
                out["user"],
                [
                    ("rank", "#"), ("user_id", "user"), ("requests", "requests"),
                    ("failed_requests", "failed"), ("total_tokens", "tokens"),
                    ("cost_usd", "cost USD"), ("credits", "credits"), ("cost_share", "share"),
                ],
            )
        )  # fmt: skip
    if "day" in out:
        print("\nBy day")
        print(
            render_table(
                out["day"],
                [
                    ("day", "day"), ("requests", "requests"), ("failed_requests", "failed"),
                    ("total_tokens", "tokens"), ("cost_usd", "cost USD"),
                    ("cost_display", f"cost {currency}"), ("credits", "credits"),
                ],
            )
        )  # fmt: skip
    return 0


def register(sub: Any) -> None:
    p = add_command(sub, "report", "usage report: summary, by model, by user, by day", cmd_report)
    p.add_argument("--org", required=True, help="organization id or exact name")
    add_range(p)
    p.add_argument(
        "--section", action="append", choices=SECTIONS, help="only these sections (repeatable)"
    )
    p.add_argument("--top", type=int, default=10, help="users in the by-user table (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")
