"""Copies the SQL the package ships from its single sources in the repository:

    supabase/migrations/*.sql  -> client/quotaflow/_sql/migrations/
    sql/bootstrap/*.sql        -> client/quotaflow/_sql/bootstrap/
    sql/queries/*.sql          -> client/quotaflow/_sql/queries/
    supabase/seed.sql          -> client/quotaflow/_sql/seed.sql
    supabase/config.toml       -> client/quotaflow/_sql/config.toml

    python tools/sync_sql.py           # write the copies (and delete stale ones)
    python tools/sync_sql.py --check   # exit 1 and name every difference; writes nothing

The copies are committed so an editable install and the wheel read the same files through
importlib.resources; the test command runs --check, so they cannot drift from the sources.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_SQL = ROOT / "client" / "quotaflow" / "_sql"
DIRECTORIES = {
    "migrations": ROOT / "supabase" / "migrations",
    "bootstrap": ROOT / "sql" / "bootstrap",
    "queries": ROOT / "sql" / "queries",
}
FILES = {
    "seed.sql": ROOT / "supabase" / "seed.sql",
    "config.toml": ROOT / "supabase" / "config.toml",
}


def expected() -> dict[Path, bytes]:
    """Every packaged file and the bytes it must hold."""
    out: dict[Path, bytes] = {}
    for name, source in DIRECTORIES.items():
        for path in sorted(source.glob("*.sql")):
            out[PACKAGE_SQL / name / path.name] = path.read_bytes()
    for name, source in FILES.items():
        out[PACKAGE_SQL / name] = source.read_bytes()
    return out


def present() -> set[Path]:
    files = {p for name in DIRECTORIES for p in (PACKAGE_SQL / name).glob("*.sql")}
    return files | {PACKAGE_SQL / name for name in FILES if (PACKAGE_SQL / name).exists()}


def differences() -> list[str]:
    want = expected()
    problems = [
        f"stale: {p.relative_to(ROOT)} has no source" for p in sorted(present() - set(want))
    ]
    for path, data in want.items():
        if not path.exists():
            problems.append(f"missing: {path.relative_to(ROOT)}")
        elif path.read_bytes() != data:
            problems.append(f"differs: {path.relative_to(ROOT)}")
    return problems


def sync() -> int:
    want = expected()
    for path in present() - set(want):
        path.unlink()
    changed = 0
    for path, data in want.items():
        if not path.exists() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for line in problems:
            print(f"sync_sql: {line}", file=sys.stderr)
        if problems:
            print("sync_sql: run `python tools/sync_sql.py` and commit the copies", file=sys.stderr)
        return 1 if problems else 0
    print(f"sync_sql: {sync()} file(s) written under {PACKAGE_SQL.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
