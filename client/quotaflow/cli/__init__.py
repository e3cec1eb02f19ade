"""The ``quotaflow`` command line: one module per command group.

    quotaflow migrate [--bootstrap]           apply quotaflow's migrations to a database
    quotaflow supabase install                quotaflow's migrations into your supabase/migrations
    quotaflow serve --port 8080               every HTTP function on one port
    quotaflow org create Acme --time-zone America/Sao_Paulo --currency BRL --rate 5.4
    quotaflow member add Acme USER_UUID --role owner     (also: member remove, member list)
    quotaflow quota set --org ORG --type daily --metric usd --limit 10
    quotaflow quota list --org ORG
    quotaflow pricing import model_prices_and_context_window.json
    quotaflow pricing list --provider openai
    quotaflow report --org ORG --days 30      summary, by model, by user, by day
    quotaflow export --org ORG --format csv --output usage.csv
    quotaflow keys create --org ORG --name backend
    quotaflow outbox status | flush
    quotaflow demo                            the narrated offline demo

Every command takes ``--help``. The database is ``--database-url`` (before or after the
command), else ``QUOTAFLOW_DATABASE_URL``, else ``DATABASE_URL``. ``--org`` takes an
organization's id or its exact name. Exit status: 0 success, 1 error, 2 bad usage.

A command group is a module with ``register(subparsers)``; list it in :data:`GROUPS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import QuotaflowError
from . import (
    demo,
    export,
    keys,
    member,
    migrate,
    org,
    outbox,
    pricing,
    quota,
    report,
    serve,
    supabase,
)
from ._common import PROG, CliError, common_options, render_table
from .pricing import PriceRow, parse_litellm_prices

__all__ = [
    "CliError",
    "PriceRow",
    "build_parser",
    "main",
    "parse_litellm_prices",
    "render_table",
]

GROUPS = (migrate, supabase, serve, org, member, quota, pricing, report, export, keys, outbox, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Track, price and cap AI API calls: database, pricing, quotas, reports.",
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except QuotaflowError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
