"""The files quotaflow ships inside the package (SQL, the dashboard page, the functions
source shim), found with importlib.resources — the same in a checkout, an editable install
and a wheel.

    sql_files("migrations")      # the migrations in the order they apply
    read_text("server", "dashboard.html")
    path_of("server", "_functions", "main.py")   # a real file, for tools that need a path
"""

from __future__ import annotations

import atexit
import contextlib
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["SQL_KINDS", "path_of", "read_text", "resource", "sql_files"]

SQL_KINDS = ("migrations", "bootstrap", "queries")
"""The packaged SQL folders (``_sql/<kind>``), copies of supabase/migrations, sql/bootstrap
and sql/queries made by tools/sync_sql.py."""

_materialized = contextlib.ExitStack()
atexit.register(_materialized.close)
_paths: dict[tuple[str, ...], Path] = {}


def resource(*parts: str) -> Traversable:
    """A file or folder of the package, e.g. ``resource("_sql", "seed.sql")``."""
    return files("quotaflow").joinpath(*parts)


def read_text(*parts: str) -> str:
    return resource(*parts).read_text(encoding="utf-8")


def sql_files(kind: str) -> list[Traversable]:
    """The ``.sql`` files of one packaged folder, sorted by name (their apply order)."""
    if kind not in SQL_KINDS:
        raise ValueError(f"unknown SQL folder {kind!r}; one of {', '.join(SQL_KINDS)}")
    folder = resource("_sql", kind)
    return sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)


def path_of(*parts: str) -> Path:
    """A filesystem path for a packaged file or folder (extracted once if the package is
    not on disk), kept until the process exits."""
    if parts not in _paths:
        _paths[parts] = _materialized.enter_context(as_file(resource(*parts)))
    return _paths[parts]
