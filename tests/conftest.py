"""Session-wide fixtures: a real Postgres through pytest-postgresql (see ``tests/db.py``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql import factories
from pytest_postgresql.config import get_config
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from tests.db import (
    MIGRATIONS_DIR,
    REPO_ROOT,
    SEED_FILE,
    PgServer,
    drop_stale_test_databases,
    load_bootstrap,
    load_sql_files,
    new_run_dbname,
    sql_files,
)

# Unique per process (xdist workers import this module separately): parallel runs and the
# leftovers of killed runs never clash.
RUN_DBNAME = new_run_dbname()


def _maintenance(host: str, port: int | str, user: str, password: str | None) -> dict[str, Any]:
    return {"host": host, "port": port, "user": user, "password": password, "dbname": "postgres"}


def _load_schema(
    host: str, port: int | str, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    """pytest-postgresql loader for the session template: bootstrap, then migrations."""
    target = {"host": host, "port": port, "user": user, "password": password, "dbname": dbname}
    maintenance = _maintenance(host, port, user, password)
    drop_stale_test_databases(maintenance)
    load_bootstrap(target, maintenance)
    load_sql_files(target, sql_files(MIGRATIONS_DIR))


def _load_seed(
    host: str, port: int | str, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    """pytest-postgresql loader for the seeded template (a clone of the schema template)."""
    if SEED_FILE.is_file():
        target = {"host": host, "port": port, "user": user, "password": password, "dbname": dbname}
        load_sql_files(target, [SEED_FILE])


# Session templates: <RUN_DBNAME>_tmpl (schema) and <RUN_DBNAME>_seeded_tmpl (schema + seed,
# cloned from the first). Host, port and user come from pytest-postgresql's settings.
qf_template = factories.postgresql_noproc(dbname=RUN_DBNAME, load=[_load_schema])
qf_seeded_template = factories.postgresql_noproc(
    dbname=f"{RUN_DBNAME}_seeded", depends_on="qf_template", load=[_load_seed]
)

_clone_numbers = itertools.count(1)


class _ForceDropJanitor(DatabaseJanitor):
    """Clones with ``STRATEGY file_copy`` (about 3x faster than PostgreSQL 15's WAL-logged
    default for a small template) and drops with ``WITH (FORCE)``: whatever the test left
    connected cannot make it hang."""

    def _build_create_database_sql(self) -> sql.Composed:
        query = super()._build_create_database_sql()
        if self.template_dbname:
            query = query + sql.SQL(" STRATEGY file_copy")
        return query

    def drop(self) -> None:
        with self.cursor() as cur:
            if not self._database_exists(cur, self.dbname):
                return
            ident = sql.Identifier(self.dbname)
            self._dont_datallowconn(cur, self.dbname)
            self._terminate_connection(cur, self.dbname)
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def _server_of(executor: NoopExecutor) -> PgServer:
    return PgServer(executor.host, int(executor.port), executor.user, executor.password)


def _fresh_database(
    server: PgServer, dbname: str, template: str | None, load_bootstrap_only: bool = False
) -> Iterator[str]:
    janitor = _ForceDropJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=dbname,
        template_dbname=template,
    )
    with janitor:
        if load_bootstrap_only:
            load_bootstrap(server.url(dbname), server.url("postgres"))
        yield server.url(dbname)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root directory."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def migrations_dir() -> Path:
    """``supabase/migrations``."""
    return MIGRATIONS_DIR


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> PgServer:
    """The Postgres server under test (pytest-postgresql's host/port/user/password settings)."""
    config = get_config(request)
    return PgServer(config.host, int(config.port or 5432), config.user, config.password)


@pytest.fixture
def db_url(qf_template: NoopExecutor) -> Iterator[str]:
    """URL of a fresh database (bootstrap + migrations), dropped after the test."""
    yield from _fresh_database(
        _server_of(qf_template),
        f"{qf_template.dbname}_t{next(_clone_numbers)}",
        qf_template.template_dbname,
    )


@pytest.fixture
def second_db_url(qf_template: NoopExecutor) -> Iterator[str]:
    """Another fresh database on the same server, for what must never cross databases."""
    yield from _fresh_database(
        _server_of(qf_template),
        f"{qf_template.dbname}_t{next(_clone_numbers)}",
        qf_template.template_dbname,
    )


@pytest.fixture
def seeded_db_url(qf_seeded_template: NoopExecutor) -> Iterator[str]:
    """URL of a fresh database (bootstrap + migrations + supabase/seed.sql)."""
    yield from _fresh_database(
        _server_of(qf_seeded_template),
        f"{qf_seeded_template.dbname}_t{next(_clone_numbers)}",
        qf_seeded_template.template_dbname,
    )


@pytest.fixture
def bootstrap_db_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh database with only sql/bootstrap applied (no migrations)."""
    yield from _fresh_database(
        pg_server, f"{RUN_DBNAME}_b{next(_clone_numbers)}", None, load_bootstrap_only=True
    )


@pytest.fixture
def empty_db_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, empty database (no bootstrap; the cluster-wide roles may exist)."""
    yield from _fresh_database(pg_server, f"{RUN_DBNAME}_e{next(_clone_numbers)}", None)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser (``postgres``) autocommit connection to ``db_url``."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def seeded_conn(seeded_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Superuser (``postgres``) autocommit connection to ``seeded_db_url``."""
    with psycopg.connect(seeded_db_url, autocommit=True) as connection:
        yield connection
