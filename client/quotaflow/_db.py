"""The one way quotaflow's own modules (auth, reports, the CLI) reach the database on
whatever the caller has — a psycopg connection, a PostgresBackend, a database URL:
:func:`db_connection` (a dict-row connection) and :func:`db_cursor` (a dict-row cursor).
psycopg errors become quotaflow errors (``raise ... from``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .backends import PostgresBackend, translate_db_error
from .errors import ConfigurationError

Db = Any
"""A psycopg connection, a :class:`~quotaflow.backends.PostgresBackend`, or a database URL."""


@contextmanager
def db_connection(db: Db) -> Iterator[Any]:
    """A connection returning dict rows: a pooled one (given back on exit), a new autocommit
    one for a URL (closed on exit), or the connection passed in (left open; on one not in
    autocommit mode the statements join its open transaction)."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        if isinstance(db, PostgresBackend):
            with db.connection() as conn:
                yield conn
        elif isinstance(db, str):
            with psycopg.connect(db, autocommit=True, row_factory=dict_row) as conn:
                yield conn
        elif isinstance(db, psycopg.Connection):
            yield db
        else:
            raise ConfigurationError(
                f"expected a psycopg connection, a PostgresBackend or a database URL, got {db!r}"
            )
    except psycopg.Error as exc:
        raise translate_db_error(exc) from exc


@contextmanager
def db_cursor(db: Db) -> Iterator[Any]:
    """A dict-row cursor on :func:`db_connection` of ``db``."""
    from psycopg.rows import dict_row

    with db_connection(db) as conn, conn.cursor(row_factory=dict_row) as cur:
        yield cur
