"""``quotaflow export``: usage-log rows as CSV, JSON or JSON Lines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ValidationError
from ._common import (
    ProgressBar,
    add_command,
    connect,
    database_url,
    instant,
    resolve_org,
)


def cmd_export(args: argparse.Namespace) -> int:
    from ..backends import PostgresBackend
    from ..reports.analytics import UsageFilters, count_records, export

    url = database_url(args)
    with connect(args) as conn:
        org = resolve_org(conn, args.org)
    try:
        filters = UsageFilters(
            organization_id=org,
            user_id=args.user,
            conversation_id=args.conversation,
            provider=args.provider,
            model=args.model,
            success=args.success,
            start=args.start,
            end=args.end,
            tags=args.tag or None,
        )
    except ValueError as exc:
        raise ValidationError(f"invalid filters: {exc}") from exc
    backend = PostgresBackend(url, min_size=1, max_size=1)
    to_stdout = args.output in (None, "-")
    try:
        show_progress = not args.no_progress
        total = count_records(backend, filters) if show_progress else None
        bar = ProgressBar(total, sys.stderr) if show_progress else None
        progress: Callable[[int], None] | None = bar.update if bar is not None else None
        if to_stdout:
            n = export(backend, filters, args.format, sys.stdout, progress=progress)
            sys.stdout.flush()
        else:
            target = Path(args.output)
            partial = target.with_name(target.name + ".partial")
            with partial.open("w", encoding="utf-8", newline="") as out:
                n = export(backend, filters, args.format, out, progress=progress)
            partial.replace(target)
        if bar is not None:
            bar.finish()
    finally:
        backend.close()
    where = "stdout" if to_stdout else args.output
    print(f"exported {n:,} rows ({args.format}) to {where}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = add_command(sub, "export", "export usage-log rows as CSV, JSON or JSON Lines", cmd_export)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--format", choices=["csv", "json", "jsonl"], default="csv")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument("--user", help="only this app user id")
    p.add_argument("--conversation", help="only this conversation id")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--model", help="only this model (as called)")
    status = p.add_mutually_exclusive_group()
    status.add_argument("--success", dest="success", action="store_const", const=True)
    status.add_argument("--failed", dest="success", action="store_const", const=False)
    p.add_argument("--start", type=instant, help="calls at or after this ISO date/time")
    p.add_argument("--end", type=instant, help="calls before this ISO date/time")
    p.add_argument("--tag", action="append", help="only calls with this tag (repeatable: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
