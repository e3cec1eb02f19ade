"""``quotaflow migrate``: apply quotaflow's migrations to a database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import migrations
from . import pricing
from ._common import CliError, add_command, connect, database_url


def cmd_migrate(args: argparse.Namespace) -> int:
    folder = None
    if args.workdir:
        folder = Path(args.workdir) / "supabase" / "migrations"
        if not folder.is_dir():
            raise CliError(f"{args.workdir} has no supabase/migrations")
    migrations.apply(
        database_url(args),
        use_cli=not args.no_cli,
        bootstrap_first=args.bootstrap,
        migrations_dir=folder,
        echo=lambda line: print(line, flush=True),
    )
    if not args.no_price_sync:
        with connect(args) as conn, conn.transaction():
            counts, _, what = pricing.sync(conn)
        print(
            f"prices: synced to {what}: {counts['new']} new, {counts['changed']} changed,"
            f" {counts['custom']} operator price(s) kept (quotaflow pricing sync --dry-run"
            " shows the diff)",
            flush=True,
        )
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "migrate",
        "apply the migrations the database lacks (Supabase CLI if installed, else psycopg)",
        cmd_migrate,
    )
    p.add_argument(
        "--bootstrap",
        action="store_true",
        help="plain PostgreSQL only: first create the Supabase roles and auth schema"
        " (refused on a Supabase project)",
    )
    p.add_argument(
        "--no-cli",
        action="store_true",
        help="apply with psycopg even when the Supabase CLI is installed",
    )
    p.add_argument(
        "--no-price-sync",
        action="store_true",
        help="leave the prices as the migrations set them (default: then bring them up to the"
        " price snapshot this quotaflow ships, as `quotaflow pricing sync` does)",
    )
    p.add_argument(
        "--workdir",
        help="apply DIR/supabase/migrations instead of the migrations this package ships",
    )
