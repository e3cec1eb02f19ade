"""One helper shared by the modules that run their own SQL (auth, reports): a dict-row
cursor on whatever the caller has — a psycopg connection, a PostgresBackend, a database URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .backends import PostgresBackend, translate_db_error
from .errors import ConfigurationError

Db = Any
"""A psycopg connection, a :class:`~quotaflow.backends.PostgresBackend`, or a database URL."""


@contextmanager
def db_cursor(db: Db) -> Iterator[Any]:
    """A dict-row cursor on ``db``; psycopg errors become quotaflow errors (``raise ... from``).

    A pooled connection is returned to the pool and a URL's connection closed on exit; a
    connection passed in is left open, and on one not in autocommit mode the statements join
    its open transaction.
    """
    import psycopg
    from psycopg.rows import dict_row

    try:
        if isinstance(db, PostgresBackend):
            with db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                yield cur
        elif isinstance(db, str):
            with (
                psycopg.connect(db, autocommit=True) as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                yield cur
        elif isinstance(db, psycopg.Connection):
            with db.cursor(row_factory=dict_row) as cur:
                yield cur
        else:
            raise ConfigurationError(
                f"expected a psycopg connection, a PostgresBackend or a database URL, got {db!r}"
            )
    except psycopg.Error as exc:
        raise translate_db_error(exc) from exc
