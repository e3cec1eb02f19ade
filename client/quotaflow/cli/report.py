"""``quotaflow report``: an organization's usage over a period, from the same report functions
(and with the same field names) as ``usage_stats`` and the dashboard."""

from __future__ import annotations

import argparse
from typing import Any

from .. import reports
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
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
        overview = reports.overview(conn, org, start=start, end=end, every_day=True)
        performance = reports.model_performance(conn, org, start=start, end=end)
        by_user = reports.organization_report(conn, org, start=start, end=end).by_user
        name = conn.execute("select name from public.organizations where id = %s", (org,))
        org_name = name.fetchone()["name"]
    users = [g for g in by_user if g.user_id is not None][: args.top]
    out: dict[str, Any] = {
        "summary": overview.totals,
        "model": performance.models,
        "user": users,
        "day": overview.daily,
    }
    out = {k: v for k, v in out.items() if k in sections}
    if args.json:
        print_json(
            {"organization_id": org, "period": overview.period.model_dump(), **{
                k: [r.model_dump() for r in v] if isinstance(v, list) else v.model_dump()
                for k, v in out.items()
            }}
        )  # fmt: skip
        return 0
    currency = overview.totals.display_currency
    print(f"Usage of {org_name} ({org})")
    print(f"from {fmt(start)} to {fmt(end)}")
    if "summary" in out:
        t = overview.totals
        items: list[tuple[str, Any]] = [
            ("requests", t.requests),
            ("successful", t.successful_requests),
            ("failed", t.failed_requests),
            ("input tokens", t.input_tokens),
            ("output tokens", t.output_tokens),
            ("cached input tokens", t.cached_input_tokens),
            ("total tokens", t.total_tokens),
            ("cost (USD)", t.cost_usd),
            ("credits", t.credits),
            ("average cost (USD)", t.avg_cost_usd),
            ("average latency (ms)", t.avg_latency_ms),
        ]
        if currency != "USD":
            shown = "n/a (no exchange rate)" if t.cost_display is None else t.cost_display
            items.insert(8, (f"cost ({currency})", shown))
        width = max(len(k) for k, _ in items)
        print("\nSummary")
        for key, value in items:
            print(f"  {key.ljust(width)}  {'-' if value is None else fmt(value)}")
    if "model" in out:
        print("\nBy model")
        print(render_table(
            [m.model_dump() for m in performance.models],
            [
                ("provider", "provider"), ("model", "model"), ("requests", "requests"),
                ("success_rate", "success"), ("total_tokens", "tokens"),
                ("cost_usd", "cost USD"), ("avg_cost_usd", "avg cost"),
                ("avg_latency_ms", "avg ms"), ("p50_latency_ms", "p50 ms"),
                ("p95_latency_ms", "p95 ms"),
            ],
        ))  # fmt: skip
    if "user" in out:
        print(f"\nBy user (top {args.top})")
        print(render_table(
            [{"rank": i, **g.model_dump()} for i, g in enumerate(users, 1)],
            [
                ("rank", "#"), ("user_id", "user"), ("requests", "requests"),
                ("failed_requests", "failed"), ("total_tokens", "tokens"),
                ("cost_usd", "cost USD"), ("credits", "credits"),
            ],
        ))  # fmt: skip
    if "day" in out:
        print("\nBy day")
        print(render_table(
            [d.model_dump() for d in overview.daily],
            [
                ("date", "day"), ("requests", "requests"), ("failed_requests", "failed"),
                ("total_tokens", "tokens"), ("cost_usd", "cost USD"),
                ("cost_display", f"cost {currency}"), ("credits", "credits"),
            ],
        ))  # fmt: skip
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
