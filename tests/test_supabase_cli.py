"""The pinned Supabase CLI (package.json) against local Postgres: migrations, advisors, lint.

Each test starts from a brand-new database with only ``sql/bootstrap`` applied, applies the
migrations with ``supabase migration up`` exactly as a deploy would, then asks the CLI's own
checks. The CLI runs offline: telemetry, update checks and the keyring are switched off, and
it gets an empty HOME so no user profile or access token is ever picked up.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.db import MIGRATIONS_DIR, REPO_ROOT, sql_files
from tests.supabase_support import CLI_TIMEOUT_S, SUPABASE, cli_env

pytestmark = pytest.mark.supabase_cli


# Advisors that describe the database's runtime history, not its schema: on a database created
# a second ago every index is "unused".
ADVISORS_IGNORED = frozenset({"unused_index"})


@dataclass(frozen=True)
class CliResult:
    """One CLI run: exit code, stdout, stderr and the command line (for failure messages)."""

    returncode: int
    stdout: str
    stderr: str
    args: list[str]

    def explain(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"CLI output is not JSON:\n{self.explain()}")


@pytest.fixture(scope="module")
def supabase_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``run(*args) -> CliResult``: the CLI with ``--workdir <repo>``, offline, time-limited."""
    if not SUPABASE.exists():
        pytest.fail(f"{SUPABASE} is missing: run scripts/setup.sh (npm ci)")
    env = cli_env(tmp_path_factory.mktemp("supabase-home"))

    def run(*args: str) -> CliResult:
        cmd = [str(SUPABASE), *args, "--workdir", str(REPO_ROOT), "--agent", "no"]
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr, cmd)

    yield run


@pytest.fixture
def migrated_db_url(bootstrap_db_url: str, supabase_cli: Any) -> str:
    """A bootstrap-only database on which ``supabase migration up`` succeeded."""
    result = supabase_cli("migration", "up", f"--remote={bootstrap_db_url}", "--yes")
    if result.returncode != 0:
        pytest.fail(f"supabase migration up failed:\n{result.explain()}")
    return bootstrap_db_url


def test_supabase_cli_migration_up_applies_every_migration(
    bootstrap_db_url: str, supabase_cli: Any
) -> None:
    """`supabase migration up` applies all of supabase/migrations to an empty Supabase-like db."""
    files = sql_files(MIGRATIONS_DIR)
    assert files, "no migrations in supabase/migrations"
    versions = {f.name.split("_", 1)[0] for f in files}
    assert all(v.isdigit() for v in versions), (
        f"migration names must be <version>_<name>.sql: {files}"
    )

    result = supabase_cli(
        "migration", "up", f"--remote={bootstrap_db_url}", "--yes", "--output-format", "json"
    )
    assert result.returncode == 0, result.explain()

    with psycopg.connect(bootstrap_db_url) as conn:
        applied = {
            row[0]
            for row in conn.execute("select version from supabase_migrations.schema_migrations")
        }
    assert versions <= applied, f"not applied: {sorted(versions - applied)}\n{result.explain()}"


def test_supabase_cli_db_advisors_report_no_issues(migrated_db_url: str, supabase_cli: Any) -> None:
    """`supabase db advisors` (security and performance, every level) finds nothing."""
    result = supabase_cli(
        "db", "advisors", f"--remote={migrated_db_url}",
        "--type", "all", "--level", "info", "--fail-on", "warn", "--output-format", "json",
    )  # fmt: skip
    issues = [r for r in result.json()["results"] if r["name"] not in ADVISORS_IGNORED]
    summary = "\n".join(f"{r['level']} {r['name']}: {r['detail']}" for r in issues)
    assert issues == [], f"advisors found:\n{summary}"
    assert result.returncode == 0, result.explain()


def test_supabase_cli_db_lint_reports_no_errors(migrated_db_url: str, supabase_cli: Any) -> None:
    """`supabase db lint` (plpgsql_check over every schema) reports no errors."""
    with psycopg.connect(migrated_db_url) as conn:
        available = conn.execute(
            "select 1 from pg_available_extensions where name = 'plpgsql_check'"
        ).fetchone()
    assert available, "plpgsql_check is not installed on the server (scripts/setup.sh installs it)"

    result = supabase_cli(
        "db", "lint", f"--remote={migrated_db_url}",
        "--level", "warning", "--fail-on", "error", "--output-format", "json",
    )  # fmt: skip
    findings = [
        (entry["function"], issue)
        for entry in result.json()["results"]
        for issue in entry["issues"]
    ]

    def describe(function: str, issue: dict[str, Any]) -> str:
        stmt = issue.get("statement") or {}
        where = f" (line {stmt.get('lineNumber')}: {stmt.get('text')})" if stmt else ""
        extra = "; ".join(
            str(v)
            for v in (
                (issue.get("query") or {}).get("text"),
                issue.get("detail"),
                issue.get("context"),
            )
            if v
        )
        return (
            f"{issue['level']} {function}{where}: {issue['message']} [{issue.get('sqlState')}]"
            + (f" ({extra})" if extra else "")
        )

    errors = [describe(f, i) for f, i in findings if i["level"] == "error"]
    lint_warnings = [describe(f, i) for f, i in findings if i["level"] != "error"]
    if lint_warnings:
        warnings.warn("supabase db lint:\n" + "\n".join(lint_warnings), stacklevel=1)
    assert errors == [], "supabase db lint found:\n" + "\n".join(errors)
    assert result.returncode == 0, result.explain()
