"""Smoke tests of the database fixtures in tests/conftest.py and helpers in tests/db.py."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg
import pytest

from tests.db import act_as, new_auth_user

_seen: dict[str, str] = {}


@pytest.mark.parametrize("step", ["first", "second"])
def test_each_test_gets_its_own_database(step: str, conn: psycopg.Connection[Any]) -> None:
    """A table created in one test is absent in the next; each test has a new database."""
    dbname = conn.info.dbname
    assert dbname not in _seen.values()
    _seen[step] = dbname
    exists = conn.execute("select to_regclass('public.smoke_marker') is not null").fetchone()
    assert exists == (False,)
    conn.execute("create table public.smoke_marker (id int)")


def test_db_url_is_a_libpq_url_of_the_connected_database(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    """db_url and conn point at the same database, as superuser postgres, in autocommit."""
    assert db_url.startswith("postgresql://postgres@")
    assert db_url.rsplit("/", 1)[1] == conn.info.dbname
    assert conn.autocommit
    row = conn.execute("select current_user, usesuper from pg_user where usename = current_user")
    assert row.fetchone() == ("postgres", True)


def test_act_as_sets_role_and_claims_like_postgrest(conn: psycopg.Connection[Any]) -> None:
    """Inside act_as auth.uid()/auth.role()/auth.jwt() see the claims; outside they are gone."""
    user_id = new_auth_user(conn, "ann@example.com")
    with act_as(conn, "authenticated", sub=user_id, claims={"email": "ann@example.com"}) as c:
        row = c.execute("select auth.uid(), auth.role(), current_user, auth.jwt() ->> 'aud'")
        assert row.fetchone() == (user_id, "authenticated", "authenticated", "authenticated")
        assert c.execute("select auth.email()").fetchone() == ("ann@example.com",)
    row = conn.execute("select auth.uid(), current_user")
    assert row.fetchone() == (None, "postgres")


def test_anon_cannot_do_what_postgres_can(conn: psycopg.Connection[Any]) -> None:
    """anon cannot read auth.users nor create tables; postgres can."""
    new_auth_user(conn, "bob@example.com")
    assert conn.execute("select count(*) from auth.users").fetchone() == (1,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), act_as(conn, "anon") as c:
        c.execute("select count(*) from auth.users")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), act_as(conn, "anon") as c:
        c.execute("create table public.nope (id int)")
    with act_as(conn, "anon") as c:
        assert c.execute("select auth.uid(), auth.role()").fetchone() == (None, "anon")


def test_act_as_rollback_discards_writes(conn: psycopg.Connection[Any]) -> None:
    """act_as(..., rollback=True) leaves nothing behind."""
    with act_as(conn, "service_role", rollback=True) as c:
        c.execute("create temp table scratch (id int)")
        c.execute("insert into scratch values (1)")
    assert conn.execute("select to_regclass('pg_temp.scratch')").fetchone() == (None,)


def test_seeded_database_has_the_schema(seeded_conn: psycopg.Connection[Any]) -> None:
    """seeded_conn is a fresh database with bootstrap (and migrations and seed) applied."""
    row = seeded_conn.execute("select to_regprocedure('auth.uid()') is not null").fetchone()
    assert row == (True,)


def test_leftover_connections_do_not_block_the_drop(db_url: str) -> None:
    """A test may leave connections open (e.g. a pool in a thread); teardown still drops."""
    leaked = [psycopg.connect(db_url) for _ in range(3)]
    leaked[0].execute("select 1")  # one of them inside an open transaction

    def hold() -> None:
        with contextlib.suppress(psycopg.OperationalError):  # terminated by the teardown
            leaked[1].execute("select pg_sleep(60)")

    threading.Thread(target=hold, daemon=True).start()
