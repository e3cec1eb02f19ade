"""``quotaflow supabase install``: quotaflow's migrations into an app's Supabase project."""

from __future__ import annotations

import argparse
from typing import Any

from .. import migrations
from ._common import add_command, add_group


def cmd_install(args: argparse.Namespace) -> int:
    result = migrations.install(args.project_dir, dry_run=args.dry_run)
    verb = "would write" if args.dry_run else "wrote"
    for name in result.written:
        print(f"{verb} {result.folder / name}")
    print(
        f"{len(result.written)} migration(s) {'to write' if args.dry_run else 'written'},"
        f" {len(result.present)} already present; your own files were not touched."
    )
    if not result.written:
        return 0
    early = result.before_app_latest
    if early:
        print(
            f"{len(early)} of them sort before your newest migration ({result.app_latest}). On a"
            " database that already has it, the Supabase CLI applies them only with"
            " --include-all:\n  supabase db push --include-all"
            "   (or: supabase migration up --include-all)\n"
            "They are then applied in version order; no `migration repair` is needed."
        )
    else:
        print("Apply them with your project's history:\n  supabase db push"
              "   (or: supabase migration up --remote=URL --yes)")  # fmt: skip
    return 0


def register(sub: Any) -> None:
    group = add_group(sub, "supabase", "use quotaflow from your app's own Supabase project")
    p = add_command(
        group,
        "install",
        "write quotaflow's migrations your project lacks into its supabase/migrations",
        cmd_install,
    )
    p.add_argument(
        "--project-dir",
        metavar="DIR",
        help="the project holding supabase/ (default: the current directory)",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be written")
