"""quotaflow's SQL migrations: applying them to a database, and installing them into an app's
own Supabase project.

    apply("postgresql://...")                 # quotaflow migrate
    apply(url, bootstrap=True)                # plain PostgreSQL: Supabase roles + auth first
    install("path/to/app")                    # quotaflow supabase install

**One history.** Whichever way a migration is applied — the Supabase CLI (``supabase
migration up`` / ``db push``, from quotaflow's files or from an app's project that installed
them) or :func:`apply` without the CLI — it is recorded as the same row of
``supabase_migrations.schema_migrations``: ``version`` and ``name`` from the file name
(``<version>_<name>.sql``) and ``statements``, the file split into statements exactly as the
Supabase CLI splits it (:func:`split_statements`). So the ways are interchangeable on one
database, and each applies only the migrations that are missing, in version order.

**Plain PostgreSQL** lacks what every Supabase project has (the ``anon``, ``authenticated`` and
``service_role`` roles, the ``auth`` schema with ``auth.users`` and ``auth.uid()``):
``bootstrap=True`` creates them first, and refuses to run on a real Supabase project.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._resources import read_text, sql_files
from .errors import ConfigurationError

__all__ = [
    "InstallResult",
    "Migration",
    "applied_versions",
    "apply",
    "install",
    "packaged_migrations",
    "split_statements",
    "supabase_cli",
]

FILE_NAME = re.compile(r"^([0-9]+)_(.*)\.sql$")
"""A migration file's name, as the Supabase CLI reads it: ``<version>_<name>.sql``."""
HISTORY_TABLE = "supabase_migrations.schema_migrations"
# Taken for the whole of apply(), so two processes migrating one database take turns.
_MIGRATE_LOCK_KEY = 0x71F1A9E5
# What the Supabase CLI runs before reading or writing the history.
_HISTORY_DDL = (
    "create schema if not exists supabase_migrations",
    f"create table if not exists {HISTORY_TABLE} (version text not null primary key)",
    f"alter table {HISTORY_TABLE} add column if not exists statements text[]",
    f"alter table {HISTORY_TABLE} add column if not exists name text",
)
SUPABASE_ROLES = ("anon", "authenticated", "service_role")
_BOOTSTRAP_ATTEMPTS = 3

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: str
    name: str
    text: str

    @property
    def filename(self) -> str:
        return f"{self.version}_{self.name}.sql"

    @classmethod
    def parse(cls, filename: str, text: str) -> Migration | None:
        """The migration a file holds; None for a file the Supabase CLI would not apply."""
        match = FILE_NAME.match(filename)
        return cls(match[1], match[2], text) if match else None


def packaged_migrations() -> list[Migration]:
    """The migrations this package ships, in the order they apply."""
    found = (Migration.parse(f.name, f.read_bytes().decode()) for f in sql_files("migrations"))
    return sorted((m for m in found if m is not None), key=lambda m: m.version)


def _folder_migrations(folder: Path) -> list[Migration]:
    found = (Migration.parse(p.name, p.read_bytes().decode()) for p in sorted(folder.glob("*.sql")))
    return sorted((m for m in found if m is not None), key=lambda m: m.version)


# ---------------------------------------------------------------------------------------
# Statements, split as the Supabase CLI splits them
# ---------------------------------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$\w*\$")


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL file as the Supabase CLI stores them in ``statements``: split at
    every ``;`` outside quotes, dollar quotes, comments, parentheses and ``BEGIN ATOMIC ...
    END`` bodies; each without its ``;`` and surrounding white space; empty ones dropped."""
    tokens: list[str] = []
    closers: list[str] = []  # ")" or "end", innermost last
    start = i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            newline = sql.find("\n", i + 2)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in "'\"":
            i += 1
            while i < n:
                if sql[i] == c:
                    if sql.startswith(c, i + 1):  # a doubled quote stays inside
                        i += 2
                        continue
                    i += 1
                    break
                i += 1
        elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(tag[0], tag.end())
            i = n if end < 0 else end + len(tag[0])
        elif c == "\\":
            i += 2
        else:
            if c == "(":
                closers.append(")")
            elif c == ")" and closers and closers[-1] == ")":
                closers.pop()
            elif (
                c in "cC"
                and i - 6 >= start
                and sql[i - 5 : i + 1].lower() == "atomic"
                and sql[i - 6].isspace()
            ):
                closers.append("end")
            elif (
                c in "dD"
                and closers
                and closers[-1] == "end"
                and sql[i - 2 : i + 1].lower() == "end"
            ):
                closers.pop()
            elif c == ";" and not closers:
                tokens.append(sql[start : i + 1])
                start = i + 1
            i += 1
    tokens.append(sql[start:])
    return [s for s in (t.rstrip(";").strip() for t in tokens) if s]


# ---------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------


def applied_versions(conn: Any) -> set[str]:
    """The versions the database's migration history holds (empty without a history)."""
    exists = conn.execute("select to_regclass(%s)", (HISTORY_TABLE,)).fetchone()
    if exists is None or exists[0] is None:
        return set()
    return {row[0] for row in conn.execute(f"select version from {HISTORY_TABLE}")}


def supabase_cli() -> list[str] | None:
    """The Supabase CLI to run: ``QUOTAFLOW_SUPABASE_CLI``, else ``supabase`` on the PATH, else
    ``node_modules/.bin/supabase`` in the current directory or above. None when there is none
    that can run here (the npm package's CLI is a Node.js script: it needs ``node``)."""
    explicit = os.environ.get("QUOTAFLOW_SUPABASE_CLI")
    if explicit:
        return [explicit]
    candidates = [shutil.which("supabase")]
    here = Path.cwd().resolve()
    candidates += [str(d / "node_modules" / ".bin" / "supabase") for d in (here, *here.parents)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and _runnable(Path(candidate)):
            return [candidate]
    return None


def _runnable(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            first_line = f.readline(200)
    except OSError:
        return False
    needs_node = first_line.startswith(b"#!") and b"node" in first_line
    return not needs_node or shutil.which("node") is not None


def _is_supabase_project(conn: Any) -> bool:
    """A real Supabase database (hosted or ``supabase start``): its auth server's role and
    migration table exist; the plain-Postgres bootstrap creates neither."""
    row = conn.execute(
        "select exists (select 1 from pg_catalog.pg_roles where rolname = 'supabase_auth_admin')"
        " or to_regclass('auth.schema_migrations') is not null"
    ).fetchone()
    return bool(row and row[0])


def _missing_supabase_parts(conn: Any) -> list[str]:
    row = conn.execute(
        "select array(select r from unnest(%s::text[]) r"
        "  where not exists (select 1 from pg_catalog.pg_roles where rolname = r)),"
        " to_regprocedure('auth.uid()') is not null,"
        " to_regclass('auth.users') is not null",
        (list(SUPABASE_ROLES),),
    ).fetchone()
    missing = [f"role {r}" for r in row[0]]
    if not row[1]:
        missing.append("function auth.uid()")
    if not row[2]:
        missing.append("table auth.users")
    return missing


def bootstrap(conn: Any, echo: Echo = _quiet) -> None:
    """Makes a plain PostgreSQL look like a Supabase project (roles, ``auth`` schema, default
    privileges): the packaged ``sql/bootstrap``. Idempotent. Refuses a real Supabase project."""
    if _is_supabase_project(conn):
        raise ConfigurationError(
            "this database is a Supabase project: it has its roles and auth schema already;"
            " the plain-PostgreSQL bootstrap must not run there (leave out --bootstrap)"
        )
    import psycopg

    for f in sql_files("bootstrap"):
        echo(f"Applying bootstrap {f.name}...")
        for attempt in range(1, _BOOTSTRAP_ATTEMPTS + 1):
            try:
                conn.execute(f.read_bytes())
                break
            except psycopg.errors.InternalError_ as exc:
                # Roles and their grants are cluster-wide: a bootstrap of another database
                # running at the same moment can make a GRANT fail with "tuple concurrently
                # updated". The file is idempotent, so it is run again.
                if attempt == _BOOTSTRAP_ATTEMPTS:
                    raise
                echo(f"  retrying after a concurrent change to the cluster's roles: {exc}")


@dataclass
class _Plan:
    migrations: list[Migration]
    applied: set[str]

    @property
    def pending(self) -> list[Migration]:
        return [m for m in self.migrations if m.version not in self.applied]

    @property
    def foreign(self) -> set[str]:
        """Applied versions that are not among these migrations (an app's own)."""
        return self.applied - {m.version for m in self.migrations}


def apply(
    database_url: str,
    *,
    use_cli: bool = True,
    bootstrap_first: bool = False,
    migrations_dir: str | os.PathLike[str] | None = None,
    echo: Echo = _quiet,
) -> list[str]:
    """Applies the migrations the database lacks, in version order; returns their versions.

    With the Supabase CLI (``supabase migration up --include-all``) when ``use_cli`` and one is
    installed, else statement by statement with psycopg, one transaction per migration,
    recording the same history rows. The psycopg way is also taken when the database's history
    holds versions that are not quotaflow's (an app's own migrations: the CLI would refuse).
    ``migrations_dir`` (default: the packaged migrations) is a ``supabase/migrations`` folder.
    Raises :class:`~quotaflow.errors.ConfigurationError` when a migration fails or the database
    is not Supabase-like (pass ``bootstrap_first`` for a plain PostgreSQL).
    """
    import psycopg

    migrations = (
        packaged_migrations()
        if migrations_dir is None
        else _folder_migrations(Path(migrations_dir))
    )
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("select pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
            if bootstrap_first:
                bootstrap(conn, echo)
            missing = _missing_supabase_parts(conn)
            if missing:
                raise ConfigurationError(
                    f"this database is not set up like Supabase (no {', '.join(missing)}):"
                    " for a plain PostgreSQL run `quotaflow migrate --bootstrap` (never on a"
                    " Supabase project, which has all of it)"
                )
            plan = _Plan(migrations, applied_versions(conn))
            pending = plan.pending
            if not pending:
                echo("Database is up to date.")
                return []
            cli = supabase_cli() if use_cli else None
            if cli is not None and plan.foreign:
                echo(
                    f"The database's history has {len(plan.foreign)} migration(s) that are not"
                    " quotaflow's (an app's own): applying quotaflow's missing ones directly."
                )
                cli = None
            if cli is not None:
                echo(f"Applying {len(pending)} migration(s) with the Supabase CLI ({cli[0]})")
                _apply_with_cli(cli, database_url, migrations, echo)
                still = [m.filename for m in pending if m.version not in applied_versions(conn)]
                if still:
                    raise ConfigurationError(
                        f"supabase migration up did not apply {', '.join(still)}"
                    )
            else:
                if use_cli and not plan.foreign:
                    echo("Supabase CLI not found: applying the migrations with psycopg")
                _apply_with_psycopg(conn, pending, echo)
    except psycopg.Error as exc:
        raise ConfigurationError(f"migration failed: {exc}") from exc
    echo(f"{len(pending)} migration(s) applied.")
    return [m.version for m in pending]


def _apply_with_psycopg(conn: Any, pending: Sequence[Migration], echo: Echo) -> None:
    """Each migration in one transaction: its statements one by one (as the CLI sends them),
    then its history row."""
    import psycopg

    for statement in _HISTORY_DDL:
        conn.execute(statement)
    for m in pending:
        echo(f"Applying migration {m.filename}...")
        statements = split_statements(m.text)
        at = "recording it in the history"
        try:
            with conn.transaction():
                for number, statement in enumerate(statements, 1):
                    at = f"statement {number} ({statement.splitlines()[0][:80]})"
                    conn.execute(statement.encode())
                at = "recording it in the history"
                conn.execute(
                    f"insert into {HISTORY_TABLE} (version, name, statements) values (%s, %s, %s)",
                    (m.version, m.name, statements),
                )
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"migration {m.filename} failed at {at}: {exc.diag.message_primary or exc}"
                f" [{exc.sqlstate}]; nothing of it was applied"
            ) from exc


def _apply_with_cli(cli: list[str], url: str, migrations: Sequence[Migration], echo: Echo) -> None:
    with tempfile.TemporaryDirectory(prefix="quotaflow-migrations-") as tmp:
        project = Path(tmp)
        folder = project / "supabase" / "migrations"
        folder.mkdir(parents=True)
        (project / "supabase" / "config.toml").write_text(read_text("_sql", "config.toml"))
        for m in migrations:
            (folder / m.filename).write_bytes(m.text.encode())
        cmd = [*cli, "migration", "up", "--include-all", f"--remote={url}", "--yes"]
        proc = subprocess.run(
            [*cmd, "--workdir", str(project)],
            cwd=project,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            echo(line)
    if proc.returncode != 0:
        raise ConfigurationError(f"supabase migration up failed (exit {proc.returncode})")


# ---------------------------------------------------------------------------------------
# Installing into an app's Supabase project
# ---------------------------------------------------------------------------------------


@dataclass
class InstallResult:
    """What :func:`install` did to ``<project>/supabase/migrations``."""

    folder: Path
    written: list[str] = field(default_factory=list)
    """quotaflow's migrations written now (file names)."""
    present: list[str] = field(default_factory=list)
    """quotaflow's migrations the app already had, byte for byte."""
    app_latest: str | None = None
    """The newest version among the app's own migrations."""

    @property
    def before_app_latest(self) -> list[str]:
        """Written migrations that sort before the app's newest one: a database that already
        applied that one needs ``--include-all`` to take them."""
        latest = self.app_latest
        return [f for f in self.written if latest is not None and f.split("_", 1)[0] < latest]


def install(
    project_dir: str | os.PathLike[str] | None = None, *, dry_run: bool = False
) -> InstallResult:
    """Writes quotaflow's migrations the app's ``supabase/migrations`` lacks, byte for byte
    with their own versions and names, so the app's ``supabase db push`` / ``migration up``
    applies them with its history (and ``quotaflow migrate`` on the same database finds them
    applied). Never changes or deletes a file of the app: a file with one of quotaflow's
    versions but other content is a conflict, and nothing is written then."""
    project = Path(project_dir) if project_dir is not None else Path.cwd()
    supabase = project / "supabase"
    if not supabase.is_dir():
        raise ConfigurationError(
            f"{project} has no supabase/ folder: run `supabase init` there first, or pass"
            " --project-dir with your app's project directory"
        )
    folder = supabase / "migrations"
    local = {p.name: p for p in folder.glob("*.sql")} if folder.is_dir() else {}
    by_version: dict[str, list[str]] = {}
    for name in local:
        match = FILE_NAME.match(name)
        if match:
            by_version.setdefault(match[1], []).append(name)
    ours = packaged_migrations()
    result = InstallResult(folder)
    conflicts: list[str] = []
    todo: list[Migration] = []
    for m in ours:
        names = by_version.get(m.version, [])
        if not names:
            todo.append(m)
        elif names == [m.filename] and local[m.filename].read_bytes() == m.text.encode():
            result.present.append(m.filename)
        else:
            conflicts += [f"{n} (quotaflow's {m.filename} has other content)" for n in names]
    if conflicts:
        raise ConfigurationError(
            "supabase/migrations has files with quotaflow's versions but other content: "
            + "; ".join(conflicts)
            + ". Nothing was written: restore quotaflow's files, or rename your own."
        )
    own = {m.version for m in ours}
    app_versions = [v for v in by_version if v not in own]
    result.app_latest = max(app_versions) if app_versions else None
    if not dry_run and todo:
        folder.mkdir(exist_ok=True)
    for m in todo:
        if not dry_run:
            partial = folder / f".{m.filename}.partial"
            partial.write_bytes(m.text.encode())
            partial.replace(folder / m.filename)
        result.written.append(m.filename)
    return result
