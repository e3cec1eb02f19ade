"""``quotaflow migrate``: apply quotaflow's migrations to a database."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._resources import read_text, sql_files
from ._common import (
    CliError,
    add_command,
    database_url,
)


def _workdir(explicit: str | None) -> Path:
    """The project directory holding supabase/migrations: --workdir, else a temporary copy of
    the migrations this package ships (with its supabase/config.toml, as the CLI expects)."""
    if explicit:
        path = Path(explicit).resolve()
        if not (path / "supabase" / "migrations").is_dir():
            raise CliError(f"{path} has no supabase/migrations")
        return path
    project = Path(tempfile.mkdtemp(prefix="quotaflow-migrations-"))
    atexit.register(shutil.rmtree, project, ignore_errors=True)
    folder = project / "supabase" / "migrations"
    folder.mkdir(parents=True)
    (project / "supabase" / "config.toml").write_text(read_text("_sql", "config.toml"))
    for f in sql_files("migrations"):
        (folder / f.name).write_bytes(f.read_bytes())
    return project


def supabase_command() -> list[str] | None:
    """The Supabase CLI: ``QUOTAFLOW_SUPABASE_CLI``, else ``supabase`` on the PATH, else
    ``node_modules/.bin/supabase`` in the current directory or above; None when absent."""
    explicit = os.environ.get("QUOTAFLOW_SUPABASE_CLI")
    if explicit:
        return [explicit]
    found = shutil.which("supabase")
    if found:
        return [found]
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        local = folder / "node_modules" / ".bin" / "supabase"
        if local.exists() and shutil.which("node"):
            return [str(local)]
    return None


def _migrate_with_cli(cli: list[str], url: str, workdir: Path, echo: bool) -> None:
    cmd = [*cli, "migration", "up", f"--remote={url}", "--yes"]
    cmd += ["--workdir", str(workdir)]
    proc = subprocess.run(
        cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if echo or proc.returncode != 0:
        if proc.stdout:
            print(proc.stdout, end="")
        if proc.stderr:
            print(proc.stderr, end="", file=sys.stderr)
    if proc.returncode != 0:
        raise CliError(f"supabase migration up failed (exit {proc.returncode})")


def _migrate_with_psycopg(url: str, workdir: Path, echo: bool) -> None:
    """Applies each not yet applied migration in one transaction and records it where the
    Supabase CLI does (supabase_migrations.schema_migrations), so the two can be mixed."""
    import psycopg

    files = sorted((workdir / "supabase" / "migrations").glob("*.sql"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create schema if not exists supabase_migrations")
            conn.execute(
                "create table if not exists supabase_migrations.schema_migrations"
                " (version text not null primary key, statements text[], name text)"
            )
            applied = {
                r[0]
                for r in conn.execute("select version from supabase_migrations.schema_migrations")
            }
            count = 0
            for path in files:
                version, _, name = path.stem.partition("_")
                if not version.isdigit() or version in applied:
                    continue
                if echo:
                    print(f"Applying migration {path.name}...")
                text = path.read_text(encoding="utf-8")
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute(
                        "insert into supabase_migrations.schema_migrations"
                        " (version, statements, name) values (%s, %s, %s)",
                        (version, [text], name),
                    )
                count += 1
    except psycopg.Error as exc:
        raise CliError(f"migration failed: {exc}") from exc
    if echo:
        print(f"{count} migration(s) applied" if count else "Database is up to date.")


def apply_migrations(
    database_url: str,
    *,
    workdir: str | Path | None = None,
    use_cli: bool = True,
    echo: bool = False,
) -> None:
    """Applies quotaflow's migrations to a database, as ``quotaflow migrate`` does: with the
    Supabase CLI (``supabase migration up``) when it is installed and ``use_cli``, else with
    psycopg, recording the same ``supabase_migrations.schema_migrations`` rows either way.
    ``workdir`` holds supabase/ (default: the migrations this package ships).
    Raises :class:`CliError` when a migration fails."""
    path = _workdir(None if workdir is None else str(workdir))
    cli = supabase_command() if use_cli else None
    if cli is not None:
        _migrate_with_cli(cli, database_url, path, echo)
    else:
        if use_cli and echo:
            print("Supabase CLI not found: applying the migrations with psycopg")
        _migrate_with_psycopg(database_url, path, echo)


def cmd_migrate(args: argparse.Namespace) -> int:
    apply_migrations(database_url(args), workdir=args.workdir, use_cli=not args.no_cli, echo=True)
    return 0


def register(sub: Any) -> None:
    p = add_command(sub, "migrate", "apply supabase/migrations to the database", cmd_migrate)
    p.add_argument("--workdir", help="project directory holding supabase/ (default: found)")
    p.add_argument(
        "--no-cli",
        action="store_true",
        help="load the SQL files with psycopg instead of `supabase migration up`",
    )
