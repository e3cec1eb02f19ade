"""``quotaflow outbox status|flush``: the local outbox of undelivered usage."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..outbox import Outbox
from ._common import (
    CliError,
    add_command,
    add_group,
    fmt,
    print_json,
)


def cmd_outbox_status(args: argparse.Namespace) -> int:
    box = Outbox(None, args.path)  # status reads the file only; no backend needed
    status = box.status()
    if args.json:
        print_json(status)
        return 0
    targets = status.pop("targets")
    width = max(len(k) for k in status)
    for key, value in status.items():
        print(f"{key.ljust(width)}  {fmt(value)}")
    for t in targets:  # one line per database the events are meant for
        print(
            f"  {t['target']}: {t['pending']} pending, {t['dead']} dead"
            f", oldest {fmt(t['oldest_age_seconds'])} s"
        )
    return 0


def cmd_outbox_flush(args: argparse.Namespace) -> int:
    from ..backends import HttpBackend, PostgresBackend

    url = (
        getattr(args, "database_url", None)
        or os.environ.get("QUOTAFLOW_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    # A connection attempt must not outlast the flush's own time budget.
    wait = max(1.0, min(10.0, args.timeout))
    backend: Any = (
        PostgresBackend(url, max_size=2, timeout=wait) if url else HttpBackend(timeout=wait)
    )
    box = Outbox(backend, args.path)
    box.claim_unbound = args.claim_unbound
    before = box.pending()
    try:
        drained = box.flush(args.timeout)
        left = box.pending()
        others = sum(t["pending"] for t in box.status()["targets"] if not t["mine"])
        if not left:
            box.close(timeout=0)  # nothing left to drain: just stops and closes
    finally:
        backend.close()
    print(f"delivered {before - left} event(s); {left} still pending")
    if others:
        print(f"{others} event(s) for other databases left alone (see: quotaflow outbox status)")
    if not drained:
        raise CliError(f"{left} event(s) could not be delivered within {args.timeout:g} s")
    return 0


def register(sub: Any) -> None:
    osub = add_group(sub, "outbox", "the local outbox of usage events not yet delivered")
    p = add_command(osub, "status", "pending and dead events, oldest age, last error",
                    cmd_outbox_status)  # fmt: skip
    p.add_argument("--path", help="outbox file (default: $QUOTAFLOW_OUTBOX_PATH or ~/.quotaflow)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = add_command(osub, "flush", "deliver every pending event now", cmd_outbox_flush)
    p.add_argument("--path", help="outbox file (default: $QUOTAFLOW_OUTBOX_PATH or ~/.quotaflow)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to keep trying")
    p.add_argument("--claim-unbound", action="store_true",
                   help="also deliver events an older quotaflow stored without naming their"
                        " database, to this one")  # fmt: skip
