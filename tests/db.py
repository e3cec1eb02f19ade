"""Real-Postgres test helpers: one template per session, a fresh clone per test.

The server is the one pytest-postgresql is configured for ("noproc" mode; defaults in
``pyproject.toml``: 127.0.0.1:5432, user ``postgres``, trust auth; override with
``--postgresql-host/--postgresql-port/--postgresql-user/--postgresql-password``).
``scripts/setup.sh`` starts it.

At the start of a session ``sql/bootstrap/*.sql`` (what makes a plain Postgres look like
Supabase) and then ``supabase/migrations/*.sql`` are loaded, each in name order, into a
template database whose name is unique to the run (``qftest_<host>_<pid>_<random>_tmpl``);
every test gets its own ``CREATE DATABASE ... TEMPLATE`` clone, dropped after the test
(connections the test left open, e.g. a pool's, are terminated first). Templates are dropped
at session end; ones left behind by killed runs are dropped by the next run.

Fixtures (from ``tests/conftest.py``)
-------------------------------------
``pg_server`` (session)        -> :class:`PgServer`: ``host``, ``port``, ``user``, ``password``,
                                  ``url(dbname)``.
``repo_root`` (session)        -> :class:`pathlib.Path` of the repository.
``migrations_dir`` (session)   -> ``repo_root / "supabase" / "migrations"``.
``db_url`` (function)          -> ``"postgresql://postgres@127.0.0.1:5432/<fresh clone>"``,
                                  bootstrap + migrations applied. Give it to the code under test
                                  (pools, HTTP functions, ``DATABASE_URL``).
``conn`` (function)            -> ``psycopg.Connection`` to ``db_url``, ``autocommit=True``, as
                                  the superuser ``postgres`` (bypasses RLS); closed after the test.
``seeded_db_url`` / ``seeded_conn`` (function)
                               -> the same, plus ``supabase/seed.sql`` (when the file exists).
``empty_db_url`` (function)    -> a fresh, empty database (not even the bootstrap).
``bootstrap_db_url`` (function) -> a fresh database with only the bootstrap applied (no
                                  migrations): for applying migrations yourself, e.g. with the
                                  Supabase CLI.

Helpers (import from ``tests.db``)
----------------------------------
``act_as(conn, role, sub=None, claims=None, *, rollback=False)``
    Context manager: one transaction in which the connection is the API role ``role``
    (``anon``, ``authenticated``, ``service_role``) with ``request.jwt.claims`` set exactly as
    PostgREST does (``set local role``; ``set_config('request.jwt.claims', ..., true)``), so
    ``auth.uid()``, ``auth.role()``, ``auth.jwt()`` and RLS behave as in Supabase. Commits at
    the end (``rollback=True`` discards everything instead); either way the role and claims
    end with the transaction. An error inside aborts the transaction: wrap the whole
    ``with act_as(...)`` in ``pytest.raises``, not a single statement inside it. The
    connection must be idle (autocommit, or no open transaction)::

        user_id = new_auth_user(conn, "ann@example.com")
        with act_as(conn, "authenticated", sub=user_id) as c:
            rows = c.execute("select * from public.organizations").fetchall()

``new_auth_user(conn, email=None, *, user_id=None, user_metadata=None) -> uuid.UUID``
    Inserts a Supabase auth user (``auth.users``) and returns its id. Run it as ``postgres``
    (outside ``act_as``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

__all__ = [
    "BOOTSTRAP_DIR",
    "MIGRATIONS_DIR",
    "REPO_ROOT",
    "SEED_FILE",
    "TEST_DB_PREFIX",
    "PgServer",
    "SqlFileError",
    "act_as",
    "drop_stale_test_databases",
    "load_bootstrap",
    "load_sql_files",
    "new_auth_user",
    "new_run_dbname",
    "sql_files",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_DIR = REPO_ROOT / "sql" / "bootstrap"
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"
SEED_FILE = REPO_ROOT / "supabase" / "seed.sql"

#: Prefix of every database the test suite creates: ``qftest_<host>_<pid>_<random>...``.
TEST_DB_PREFIX = "qftest_"
#: Short tag of this machine, so a run only ever cleans up after runs of the same host.
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]

# Arbitrary constant: serializes loading the bootstrap across concurrent test runs, because
# roles and their memberships are cluster-wide and concurrent GRANTs can fail.
_BOOTSTRAP_LOCK_KEY = 0x71F10B00


@dataclass(frozen=True)
class PgServer:
    """Where the test Postgres server is and who we are on it."""

    host: str
    port: int
    user: str
    password: str | None = None

    def url(self, dbname: str) -> str:
        """libpq URL of ``dbname`` on this server."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"


class SqlFileError(RuntimeError):
    """A bootstrap, migration or seed file failed to load; says which file and line."""


def sql_files(directory: Path) -> list[Path]:
    """The ``*.sql`` files of ``directory`` in name order (empty if it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".sql" and p.is_file())


def _line_of(text: str, position: str | None) -> str:
    if not position or not position.isdigit():
        return ""
    return f", line {text.count(chr(10), 0, int(position) - 1) + 1}"


def load_sql_files(conninfo: str | Mapping[str, Any], files: Sequence[Path]) -> None:
    """Run each file as one autocommit ``execute`` (``do $$`` blocks and functions are fine).

    A file runs as a single implicit transaction, as ``psql -1`` would: it applies whole or
    not at all. Stops at the first failing file with a :class:`SqlFileError`.
    """
    with psycopg.connect(**_connect_kwargs(conninfo), autocommit=True) as conn:
        for path in files:
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                continue
            try:
                conn.execute(text.encode())
            except psycopg.Error as exc:
                where = _line_of(text, exc.diag.statement_position)
                rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
                detail = f"\nDETAIL: {exc.diag.message_detail}" if exc.diag.message_detail else ""
                raise SqlFileError(
                    f"{rel}{where}: [{exc.sqlstate}] {exc.diag.message_primary or exc}{detail}"
                ) from exc


def _connect_kwargs(conninfo: str | Mapping[str, Any]) -> dict[str, Any]:
    kwargs = {"conninfo": conninfo} if isinstance(conninfo, str) else dict(conninfo)
    kwargs.pop("autocommit", None)
    return kwargs


def load_bootstrap(
    conninfo: str | Mapping[str, Any], maintenance_conninfo: str | Mapping[str, Any]
) -> None:
    """Apply ``sql/bootstrap/*.sql``, serialized cluster-wide with an advisory lock.

    ``maintenance_conninfo`` is a database every run shares (``postgres``): advisory locks
    are per database.
    """
    with psycopg.connect(**_connect_kwargs(maintenance_conninfo), autocommit=True) as lock_conn:
        lock_conn.execute("select pg_advisory_lock(%s)", (_BOOTSTRAP_LOCK_KEY,))
        try:
            load_sql_files(conninfo, sql_files(BOOTSTRAP_DIR))
        finally:
            lock_conn.execute("select pg_advisory_unlock(%s)", (_BOOTSTRAP_LOCK_KEY,))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_dbname() -> str:
    """A database name unique to this process and run: ``qftest_<host>_<pid>_<random>``."""
    return f"{TEST_DB_PREFIX}{HOST_TAG}_{os.getpid()}_{secrets.token_hex(3)}"


def drop_stale_test_databases(maintenance_conninfo: str | Mapping[str, Any]) -> list[str]:
    """Drop ``qftest_<host>_<pid>_*`` databases whose creating process (on this host) is gone.

    Leftovers of killed runs. A database someone is still connected to is left alone.
    """
    dropped: list[str] = []
    with psycopg.connect(**_connect_kwargs(maintenance_conninfo), autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like %s",
            (f"{TEST_DB_PREFIX}{HOST_TAG}_".replace("_", r"\_") + "%",),
        ).fetchall()
        for (name,) in rows:
            pid_part = name[len(TEST_DB_PREFIX) + len(HOST_TAG) + 1 :].split("_", 1)[0]
            if not pid_part.isdigit() or _pid_alive(int(pid_part)):
                continue
            busy = conn.execute(
                "select count(*) from pg_stat_activity where datname = %s", (name,)
            ).fetchone()
            if busy and busy[0]:
                continue
            ident = sql.Identifier(name)
            try:
                conn.execute(sql.SQL("alter database {} is_template false").format(ident))
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))
            except psycopg.Error:
                continue  # another run is cleaning it up, or it is in use: not ours to force
            dropped.append(name)
    return dropped


@contextmanager
def act_as(
    conn: psycopg.Connection[Any],
    role: str,
    sub: str | uuid.UUID | None = None,
    claims: Mapping[str, Any] | None = None,
    *,
    rollback: bool = False,
) -> Iterator[psycopg.Connection[Any]]:
    """Run the block as PostgREST would for a request with these JWT claims.

    Claims are ``{"aud": "authenticated", "role": role, "sub": sub}`` (``sub`` only when given)
    updated with ``claims``. Yields ``conn``.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise RuntimeError("act_as needs an idle connection (no open transaction)")
    payload: dict[str, Any] = {"aud": "authenticated", "role": role}
    if sub is not None:
        payload["sub"] = str(sub)
    if claims:
        payload.update(claims)
    with conn.transaction(force_rollback=rollback):
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(payload),))
        yield conn


def new_auth_user(
    conn: psycopg.Connection[Any],
    email: str | None = None,
    *,
    user_id: uuid.UUID | None = None,
    user_metadata: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """Create a Supabase auth user (a row in ``auth.users``) and return its id."""
    user_id = user_id or uuid.uuid4()
    conn.execute(
        "insert into auth.users (id, email, raw_user_meta_data, email_confirmed_at)"
        " values (%s, %s, %s::jsonb, now())",
        (user_id, email, json.dumps(dict(user_metadata or {}))),
    )
    return user_id
