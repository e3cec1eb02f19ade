"""The package is the product: the wheel is built, installed into a fresh venv outside the
checkout, and used from there with node off the PATH — migrate, org create, serve (health, an
execute against the shipped fake provider, the dashboard), the demo, and adoption into a
scratch Supabase project that the real Supabase CLI then applies.

The wheel and the venv are made once per session (about 10 s: the build and the install read
the local package index and pip's cache).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psycopg
import pytest

from tests.db import MIGRATIONS_DIR, REPO_ROOT, PgServer, new_run_dbname, sql_files
from tests.supabase_support import run_cli

TIMEOUT_S = 180
SERVICE_KEY = "wheel-test-service-key"


@dataclass(frozen=True)
class Installed:
    """The wheel and a venv holding it, with an environment that has no node and no checkout."""

    wheel: Path
    venv: Path
    home: Path
    work: Path
    """An empty directory outside the checkout: every command runs there."""

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        keep = {"LANG", "LC_ALL", "TZ"}
        env = {k: v for k, v in os.environ.items() if k in keep}
        env.update(PATH=str(self.bin), HOME=str(self.home), PGSSLMODE="disable", **extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "quotaflow"), *args],
            cwd=self.work,
            env=self.env(**extra),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    def start(self, argv: list[str], **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            cwd=self.work,
            env=self.env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _build(tmp: Path) -> Path:
    """``pip wheel`` of a copy of the sources, so the checkout gets no build/ or egg-info."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src)
    shutil.copytree(
        REPO_ROOT / "client",
        src / "client",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(dist)],
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    (wheel,) = dist.glob("quotaflow-*.whl")
    return wheel


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    assert not tmp.is_relative_to(REPO_ROOT)
    wheel = _build(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=TIMEOUT_S)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[functions]"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    home, work = tmp / "home", tmp / "work"
    home.mkdir()
    work.mkdir()
    return Installed(wheel, venv, home, work)


def _first_line_matching(stream: IO[str], pattern: str) -> re.Match[str]:
    seen: list[str] = []
    for line in stream:
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    pytest.fail(f"no line matching {pattern!r} in:\n{''.join(seen)}")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; terminated (and reaped) after it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------
# What the wheel holds
# ---------------------------------------------------------------------------------------


def test_the_wheel_ships_the_sql_the_server_the_dashboard_and_the_testing_helper(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        for path in sql_files(MIGRATIONS_DIR):
            assert wheel.read(f"quotaflow/_sql/migrations/{path.name}") == path.read_bytes()
        for kind, folder in (("bootstrap", "sql/bootstrap"), ("queries", "sql/queries")):
            for path in sql_files(REPO_ROOT / folder):
                assert wheel.read(f"quotaflow/_sql/{kind}/{path.name}") == path.read_bytes()
        assert {
            "quotaflow/_sql/config.toml",
            "quotaflow/server/dashboard.html",
            "quotaflow/server/_functions/main.py",
            "quotaflow/testing/fake_provider.py",
            "quotaflow/py.typed",
            "quotaflow/_prices/snapshot.json",
            "quotaflow/_prices/overrides.json",
        } <= names
        sources = {n: wheel.read(n).decode() for n in names if n.endswith(".py")}
    assert [n for n, text in sources.items() if "parents[" in text] == []
    assert len((REPO_ROOT / "functions" / "main.py").read_text().splitlines()) < 40

    where = subprocess.run(
        [str(installed.bin / "python"), "-c", "import quotaflow; print(quotaflow.__file__)"],
        cwd=installed.work, env=installed.env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(installed.venv)


# ---------------------------------------------------------------------------------------
# Using it
# ---------------------------------------------------------------------------------------


def test_migrate_org_create_serve_execute_and_dashboard_from_the_wheel(
    installed: Installed, empty_db_url: str, processes: list[subprocess.Popen[str]]
) -> None:
    """A plain PostgreSQL, no node: migrate --bootstrap applies every migration with psycopg;
    org create; serve answers health, one execute against the shipped fake provider, and the
    dashboard page and its data."""
    assert shutil.which("node", path=installed.env()["PATH"]) is None
    migrated = installed.run("migrate", "--bootstrap", "--database-url", empty_db_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "Supabase CLI not found: applying the migrations with psycopg" in migrated.stdout
    with psycopg.connect(empty_db_url) as conn:
        versions = [r[0] for r in conn.execute(
            "select version from supabase_migrations.schema_migrations order by 1")]  # fmt: skip
    assert versions == [p.name.split("_", 1)[0] for p in sql_files(MIGRATIONS_DIR)]
    again = installed.run("migrate", "--database-url", empty_db_url)
    assert again.returncode == 0 and "Database is up to date." in again.stdout
    # The first migrate brought the prices up to the shipped snapshot; the second finds
    # nothing to change.
    assert "prices: synced to litellm" in migrated.stdout and " new, " in migrated.stdout
    assert ": 0 new, 0 changed" in again.stdout

    created = installed.run("org", "create", "Wheel Co", "--time-zone", "Europe/Lisbon",
                            "--database-url", empty_db_url)  # fmt: skip
    assert created.returncode == 0, created.stderr
    org = re.search(r"organization (\S+) created", created.stdout)
    assert org is not None
    org_id = org[1]

    fake = installed.start(
        [str(installed.bin / "python"), "-m", "quotaflow.testing.fake_provider", "--port", "0"]
    )
    processes.append(fake)
    assert fake.stdout is not None
    fake_url = _first_line_matching(fake.stdout, r"listening on (http://\S+)")[1]
    server = installed.start(
        [str(installed.bin / "quotaflow"), "serve", "--port", "0"],
        QUOTAFLOW_DATABASE_URL=empty_db_url,
        SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
        OPENAI_API_KEY="test",
        QUOTAFLOW_OPENAI_BASE_URL=fake_url + "/v1",
        QUOTAFLOW_OUTBOX_PATH=str(installed.home / "outbox.sqlite3"),
    )
    processes.append(server)
    assert server.stdout is not None
    functions = _first_line_matching(server.stdout, r"functions on (http://\S+)/<name>")[1]

    with httpx.Client(base_url=functions + "/", timeout=30) as http:
        health = http.get("health")
        assert health.status_code == 200 and health.json()["database"] == "ok"
        auth = {"Authorization": f"Bearer {SERVICE_KEY}"}
        answer = http.post("execute", headers=auth, json={
            "request": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 50,
                        "messages": [{"role": "user", "content": "Hello from the wheel"}]},
            "context": {"organization_id": org_id, "user_id": "wheel-user"},
        })  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert float(answer.json()["cost"]) > 0 and answer.json()["usage"]["input_tokens"] > 0
        page = http.get("dashboard", params={"organization_id": org_id})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (
            "<title>quotaflow" in page.text
            and "default-src 'none'" in page.headers["content-security-policy"]
        )
        data = http.get("dashboard", headers=auth,
                        params={"organization_id": org_id, "format": "json"})  # fmt: skip
        assert data.status_code == 200
        assert data.json()["totals"]["requests"] == 1
        assert data.json()["by_user"][0]["user_id"] == "wheel-user"


def test_the_demo_runs_from_the_wheel(installed: Installed, pg_server: PgServer) -> None:
    """`quotaflow demo` says what it sets up (and that it replaces --db-name), then plays."""
    name = new_run_dbname() + "_demo"
    try:
        demo = installed.run("demo", "--database-url", pg_server.url("postgres"),
                             "--db-name", name)  # fmt: skip
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert f"drops any existing database named {name}" in demo.stdout
        assert "Eight concurrent calls race" in demo.stdout
        assert "never overspent" in demo.stdout
    finally:
        with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.mark.supabase_cli
def test_an_app_project_adopts_quotaflow_and_the_supabase_cli_applies_both(
    installed: Installed, bootstrap_db_url: str, tmp_path: Path
) -> None:
    """`quotaflow supabase install` (from the wheel) into a project with two migrations of its
    own; `supabase migration up` then applies every migration of both, in version order."""
    app = tmp_path / "app"
    (app / "supabase" / "migrations").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "supabase" / "config.toml", app / "supabase")
    own = {
        "20200101000000_app_profiles.sql": "create table public.app_profiles (id uuid);",
        "20991231000000_app_settings.sql": "create table public.app_settings (key text);",
    }
    for name, text in own.items():
        (app / "supabase" / "migrations" / name).write_text(text + "\n")

    installed_files = installed.run("supabase", "install", "--project-dir", str(app))
    assert installed_files.returncode == 0, installed_files.stderr
    written = re.findall(r"^wrote .*/(\S+\.sql)$", installed_files.stdout, flags=re.M)
    assert written == [p.name for p in sql_files(MIGRATIONS_DIR)]
    for name, text in own.items():
        assert (app / "supabase" / "migrations" / name).read_text() == text + "\n"

    home = tmp_path / "home"
    home.mkdir()
    applied = run_cli(home, "migration", "up", "--workdir", str(app),
                      f"--remote={bootstrap_db_url}", "--yes", cwd=app)  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with psycopg.connect(bootstrap_db_url) as conn:
        versions = [r[0] for r in conn.execute(
            "select version from supabase_migrations.schema_migrations order by 1")]  # fmt: skip
        tables = conn.execute(
            "select to_regclass('public.app_settings'), to_regclass('public.api_usage_logs')"
        ).fetchone()
    expected = sorted([n.split("_", 1)[0] for n in own] + [n.split("_", 1)[0] for n in written])
    assert versions == expected
    assert tables == ("app_settings", "api_usage_logs")

    rerun = installed.run("supabase", "install", "--project-dir", str(app))
    assert rerun.returncode == 0 and f"0 migration(s) written, {len(written)}" in rerun.stdout
