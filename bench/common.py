"""What every part shares: the scratch database, a result row, and small statistics."""

from __future__ import annotations

import math
import os
import secrets
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO_ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP_DIR = REPO_ROOT / "sql" / "bootstrap"
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCRATCH_PREFIX = "qfbench_"
# The key tests/db.py takes too: roles are cluster-wide, so bootstraps must not run concurrently.
BOOTSTRAP_LOCK_KEY = 0x71F10B00
# Organization n (1-based) of the benchmarks has a predictable id, so pgbench scripts can name it.
ORG_ID_SQL = "('00000000-0000-4000-8000-' || lpad(({n})::text, 12, '0'))::uuid"


def org_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@dataclass
class Row:
    """One line of the table. ``ratio`` is value / baseline unless the part says otherwise;
    ``target`` is (on, op, limit) with on = "ratio" or "value" and op = ">=" or "<="."""

    part: str
    figure: str
    value: float
    unit: str
    baseline: float
    baseline_label: str
    ratio: float
    target: tuple[str, str, float] | None = None
    why: str = ""
    """One-line guess at the reason, printed when the target is missed."""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _load(url: str, files: list[Path]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for path in files:
            conn.execute(path.read_text().encode())


def _sql_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.sql") if p.is_file())


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new database with bootstrap + migrations loaded; dropped on exit. Scratch databases of
    bench runs that died (their pid is gone) are dropped first."""
    name = f"{SCRATCH_PREFIX}{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for (old,) in admin.execute(
            "select datname from pg_database where datname like 'qfbench\\_%'"
        ).fetchall():
            pid = old[len(SCRATCH_PREFIX):].split("_", 1)[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                _drop(admin, old)
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        url = make_conninfo(admin_url, dbname=name)
        try:
            admin.execute("select pg_advisory_lock(%s)", (BOOTSTRAP_LOCK_KEY,))
            try:
                _load(url, _sql_files(BOOTSTRAP_DIR))
            finally:
                admin.execute("select pg_advisory_unlock(%s)", (BOOTSTRAP_LOCK_KEY,))
            _load(url, _sql_files(MIGRATIONS_DIR))
            yield url
        finally:
            _drop(admin, name)


def libpq_env(url: str) -> dict[str, str]:
    """PG* environment variables for command-line tools (pgbench) from a conninfo."""
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE"}
    params = conninfo_to_dict(url)
    return {names[k]: str(v) for k, v in params.items() if k in names and v is not None}
