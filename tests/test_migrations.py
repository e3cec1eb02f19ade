"""``quotaflow migrate`` and ``quotaflow supabase install`` against real Postgres and the real
Supabase CLI: one migration history whichever tool writes it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from quotaflow import migrations
from quotaflow.cli import main
from quotaflow.errors import ConfigurationError

from tests.supabase_support import SUPABASE, run_cli, use_cli_env

# An app's own migrations, with what makes splitting statements hard: quotes, dollar quotes,
# nested comments and a BEGIN ATOMIC body holding semicolons.
APP_EARLY = """-- the app's first table; a comment with a ; in it
create table public.app_notes (id bigint primary key, body text default 'a;b''c');
/* a block /* nested ; */ comment */
create function public.app_note_count() returns bigint language sql
begin atomic
  select count(*) from public.app_notes;
end;
do $body$ begin perform 1; end $body$;
"""
APP_LATE = "alter table public.app_notes add column title text;\n"
EARLY, LATE = "20250101000000_app_notes.sql", "20270101000000_app_titles.sql"


def history(url: str) -> list[tuple[str, str, list[str]]]:
    with psycopg.connect(url) as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "select version, name, statements from supabase_migrations.schema_migrations"
                " order by version"
            )
        ]


def app_project(root: Path, *files: tuple[str, str]) -> Path:
    """A scratch Supabase project holding the app's own migrations."""
    folder = root / "supabase" / "migrations"
    folder.mkdir(parents=True)
    shutil.copy(Path(migrations.__file__).parent / "_sql" / "config.toml", root / "supabase")
    for name, text in files:
        (folder / name).write_text(text)
    return root


def cli_up(home: Path, project: Path, url: str, *flags: str) -> Any:
    return run_cli(home, "migration", "up", *flags, "--workdir", str(project),
                   f"--remote={url}", "--yes", cwd=project)  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------
# The same history rows
# ---------------------------------------------------------------------------------------


@pytest.mark.supabase_cli
def test_psycopg_writes_the_rows_the_supabase_cli_writes(
    bootstrap_db_url: str, empty_db_url: str, tmp_path: Path, home: Path
) -> None:
    """version, name and statements are byte-identical to what `supabase migration up` (3.1.0)
    records, for quotaflow's migrations and for an app's tricky one."""
    project = app_project(tmp_path / "app", (EARLY, APP_EARLY))
    migrations.install(project)
    result = cli_up(home, project, bootstrap_db_url)
    assert result.returncode == 0, result.stderr

    migrations.apply(empty_db_url, use_cli=False, bootstrap_first=True,
                     migrations_dir=project / "supabase" / "migrations")  # fmt: skip

    by_cli, by_psycopg = history(bootstrap_db_url), history(empty_db_url)
    assert by_psycopg == by_cli
    assert len(by_cli) == len(migrations.packaged_migrations()) + 1
    early = next(r for r in by_cli if r[1] == "app_notes")
    assert len(early[2]) == 3 and early[2][1].endswith("end")


@pytest.mark.supabase_cli
def test_cli_and_psycopg_are_interchangeable_both_ways(
    bootstrap_db_url: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Applied by the CLI, `quotaflow migrate --no-cli` finds nothing to do; an older database
    migrated without the CLI gets only its missing migrations from the CLI, and then the
    other way finds nothing to do."""
    use_cli_env(monkeypatch, home)
    monkeypatch.setenv("QUOTAFLOW_SUPABASE_CLI", str(SUPABASE))
    ours = migrations.packaged_migrations()
    older = tmp_path / "older"
    older.mkdir()
    for m in ours[:5]:
        (older / m.filename).write_text(m.text)

    assert migrations.apply(bootstrap_db_url, use_cli=False, migrations_dir=older) == [
        m.version for m in ours[:5]
    ]
    capsys.readouterr()
    assert main(["migrate", "--database-url", bootstrap_db_url]) == 0
    out = capsys.readouterr().out
    assert "with the Supabase CLI" in out and f"{len(ours) - 5} migration(s) applied" in out
    assert [m.filename for m in ours[:5] if m.filename in out] == []
    assert [r[0] for r in history(bootstrap_db_url)] == [m.version for m in ours]

    assert main(["migrate", "--no-cli", "--database-url", bootstrap_db_url]) == 0
    assert "Database is up to date." in capsys.readouterr().out


def test_an_older_database_gets_only_the_missing_migrations(bootstrap_db_url: str) -> None:
    ours = migrations.packaged_migrations()
    with psycopg.connect(bootstrap_db_url, autocommit=True) as conn:
        for m in ours[:-2]:
            conn.execute(m.text.encode())
        conn.execute("create schema supabase_migrations")
        conn.execute(
            "create table supabase_migrations.schema_migrations (version text primary key)"
        )
        for m in ours[:-2]:
            conn.execute(
                "insert into supabase_migrations.schema_migrations values (%s)", (m.version,)
            )
    applied = migrations.apply(bootstrap_db_url, use_cli=False)
    assert applied == [m.version for m in ours[-2:]]
    assert [r[1] for r in history(bootstrap_db_url)][-2:] == [m.name for m in ours[-2:]]


def test_a_failing_migration_applies_nothing_of_itself(
    bootstrap_db_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "20990101000000_half.sql").write_text(
        "create table public.half_done (id int);\nselect no_such_function();\n"
    )
    with pytest.raises(ConfigurationError, match=r"20990101000000_half.sql failed at statement 2"):
        migrations.apply(bootstrap_db_url, use_cli=False, migrations_dir=folder)
    with psycopg.connect(bootstrap_db_url) as conn:
        assert conn.execute("select to_regclass('public.half_done')").fetchone() == (None,)
        assert migrations.applied_versions(conn) == set()


# ---------------------------------------------------------------------------------------
# Plain PostgreSQL: the bootstrap
# ---------------------------------------------------------------------------------------


def test_plain_postgres_needs_the_bootstrap_and_says_so(
    empty_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--no-cli", "--database-url", empty_db_url]) == 1
    err = capsys.readouterr().err
    assert "not set up like Supabase" in err and "quotaflow migrate --bootstrap" in err
    with psycopg.connect(empty_db_url) as conn:
        assert migrations.applied_versions(conn) == set()

    assert main(["migrate", "--bootstrap", "--no-cli", "--database-url", empty_db_url]) == 0
    assert len(history(empty_db_url)) == len(migrations.packaged_migrations())


def test_the_bootstrap_refuses_a_real_supabase_project(bootstrap_db_url: str) -> None:
    with psycopg.connect(bootstrap_db_url, autocommit=True) as conn:
        # What GoTrue (Supabase's auth server) leaves in every Supabase database.
        conn.execute("create table auth.schema_migrations (version text primary key)")
    with pytest.raises(ConfigurationError, match="is a Supabase project"):
        migrations.apply(bootstrap_db_url, use_cli=False, bootstrap_first=True)
    with psycopg.connect(bootstrap_db_url) as conn:
        assert migrations.applied_versions(conn) == set()


def test_without_node_the_npm_cli_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The npm package's CLI is a Node.js script: without node on the PATH it cannot run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "supabase"
    script.write_text("#!/usr/bin/env node\n")
    script.chmod(0o755)
    monkeypatch.delenv("QUOTAFLOW_SUPABASE_CLI", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.chdir(tmp_path)
    assert migrations.supabase_cli() is None


# ---------------------------------------------------------------------------------------
# quotaflow supabase install
# ---------------------------------------------------------------------------------------


def test_install_writes_only_what_is_missing_and_never_the_apps_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = app_project(tmp_path / "app", (EARLY, APP_EARLY), (LATE, APP_LATE))
    folder = project / "supabase" / "migrations"
    ours = migrations.packaged_migrations()
    # An app that installed an older quotaflow: the first five are there already.
    for m in ours[:5]:
        (folder / m.filename).write_bytes(m.text.encode())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    assert main(["supabase", "install", "--project-dir", str(project)]) == 0
    out = capsys.readouterr().out
    assert [line.split("/")[-1] for line in out.splitlines() if line.startswith("wrote")] == [
        m.filename for m in ours[5:]
    ]
    assert f"{len(ours) - 5} migration(s) written, 5 already present" in out
    assert "--include-all" in out  # they sort before the app's 2027 migration
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert {k: after[k] for k in before} == before
    for m in ours:
        assert (folder / m.filename).read_bytes() == m.text.encode()

    assert main(["supabase", "install", "--project-dir", str(project)]) == 0
    assert f"0 migration(s) written, {len(ours)} already present" in capsys.readouterr().out


def test_install_refuses_a_changed_copy_and_writes_nothing(tmp_path: Path) -> None:
    project = app_project(tmp_path / "app", (EARLY, APP_EARLY))
    first = migrations.packaged_migrations()[0]
    edited = project / "supabase" / "migrations" / first.filename
    edited.write_text(first.text + "\n-- edited\n")
    with pytest.raises(ConfigurationError, match="other content"):
        migrations.install(project)
    assert sorted(p.name for p in edited.parent.iterdir()) == sorted([EARLY, first.filename])


def test_install_needs_a_supabase_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["supabase", "install", "--project-dir", str(tmp_path)]) == 1
    assert "supabase init" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.supabase_cli
def test_an_app_that_is_ahead_adopts_quotaflow_with_include_all(
    bootstrap_db_url: str, tmp_path: Path, home: Path
) -> None:
    """The app's database already has a migration newer than quotaflow's: after install the CLI
    refuses plain `migration up` (as the README says) and applies everything with
    --include-all, without `migration repair`; `quotaflow migrate` then finds nothing to do."""
    project = app_project(tmp_path / "app", (EARLY, APP_EARLY), (LATE, APP_LATE))
    assert cli_up(home, project, bootstrap_db_url).returncode == 0
    migrations.install(project)

    refused = cli_up(home, project, bootstrap_db_url)
    assert refused.returncode != 0 and "--include-all" in refused.stdout + refused.stderr
    applied = cli_up(home, project, bootstrap_db_url, "--include-all")
    assert applied.returncode == 0, applied.stderr

    versions = [r[0] for r in history(bootstrap_db_url)]
    assert versions == sorted(
        [EARLY[:14], LATE[:14], *(m.version for m in migrations.packaged_migrations())]
    )
    assert migrations.apply(bootstrap_db_url, use_cli=False) == []
