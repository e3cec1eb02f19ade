"""What every command module shares: output (tables, JSON, progress), the database
connection, organization lookup, argument types, and the two parser helpers."""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import IO, Any

from .._db import db_connection
from ..errors import ConfigurationError, QuotaflowError

PROG = "quotaflow"
PROGRESS_INTERVAL = 0.1
"""Seconds between redraws of the export progress bar."""
DISPLAY_DECIMALS = Decimal("0.000001")
"""Terminal tables round money to millionths (exports and --json stay exact)."""

Handler = Callable[[argparse.Namespace], int]


class CliError(QuotaflowError):
    """A command cannot run as asked (printed as ``quotaflow: error: ...``, exit 1)."""

    code = "cli_error"


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Decimal):
        if value.as_tuple().exponent < -6:  # type: ignore[operator]
            value = value.quantize(DISPLAY_DECIMALS, rounding=ROUND_HALF_UP)
        text = format(value, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return ",".join(fmt(v) for v in value)
    return str(value)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` is (key, header); numbers right-aligned."""
    cells = [[fmt(r.get(key)) for key, _ in columns] for r in rows]
    numeric = [
        all(isinstance(r.get(key), (int, Decimal)) or r.get(key) is None for r in rows)
        and any(r.get(key) is not None for r in rows)
        for key, _ in columns
    ]
    widths = [
        max([len(header), *(len(c[i]) for c in cells)]) for i, (_, header) in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([h for _, h in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    if not rows:
        out.append("(no rows)")
    return "\n".join(out)


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def print_json(value: Any) -> None:
    print(json.dumps(value, default=json_default, indent=2, ensure_ascii=False))


class ProgressBar:
    """A one-line progress bar on a stream (stderr), redrawn at most every 0.1 s."""

    def __init__(self, total: int | None, stream: IO[str], label: str = "exporting") -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self.width = 30
        self._last = 0.0
        self._done = 0
        isatty = getattr(stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        """Redrawn in place on a terminal; elsewhere (a log file) only the final line."""

    def update(self, done: int) -> None:
        self._done = done
        now = time.monotonic()
        if self.interactive and now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._draw()

    def finish(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        if self.total:
            frac = min(self._done / self.total, 1.0)
            filled = int(self.width * frac)
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"{self.label} [{bar}] {frac:4.0%} {self._done:,}/{self.total:,} rows"
        else:
            text = f"{self.label} {self._done:,} rows"
        self.stream.write(("\r" if self.interactive else "") + text)
        self.stream.flush()


def database_url(args: argparse.Namespace) -> str:
    url = (
        getattr(args, "database_url", None)
        or os.environ.get("QUOTAFLOW_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise ConfigurationError(
            "no database: pass --database-url or set QUOTAFLOW_DATABASE_URL / DATABASE_URL"
        )
    return str(url)


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Any]:
    """An autocommit dict-row connection to the command's database (quotaflow._db)."""
    with db_connection(database_url(args)) as conn:
        yield conn


def resolve_org(conn: Any, org: str) -> str:
    """An organization id from an id or an exact name."""
    try:
        org_id = str(uuid.UUID(org))
    except ValueError:
        rows = conn.execute(
            "select id from public.organizations where name = %s order by created_at", (org,)
        ).fetchall()
        if not rows:
            raise CliError(f"no organization named {org!r}") from None
        if len(rows) > 1:
            raise CliError(f"{len(rows)} organizations are named {org!r}: pass the id") from None
        return str(rows[0]["id"])
    if not conn.execute("select 1 from public.organizations where id = %s", (org_id,)).fetchone():
        raise CliError(f"no organization with id {org_id}")
    return org_id


def instant(text: str) -> datetime:
    """A command-line instant: ISO 8601 date or date-time (naive = UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def decimal_arg(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def thresholds_arg(text: str) -> list[Decimal]:
    if not text.strip():
        return []
    return [
        decimal_arg(part.strip().rstrip("%")) / (100 if "%" in part else 1)
        for part in text.split(",")
    ]


def time_range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    end = args.end or datetime.now(timezone.utc)
    start = args.start or end - timedelta(days=args.days)
    if end < start:
        raise CliError("--end is before --start")
    return start, end


# ---------------------------------------------------------------------------------------
# Parser helpers: every (sub)command takes --database-url, before or after its name
# ---------------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="Postgres URL (default: $QUOTAFLOW_DATABASE_URL, then $DATABASE_URL)",
    )
    return common


def add_command(
    parent: Any, name: str, help_text: str, handler: Handler
) -> argparse.ArgumentParser:
    """A (sub)command running ``handler``."""
    p: argparse.ArgumentParser = parent.add_parser(
        name, help=help_text, description=help_text, parents=[common_options()]
    )
    p.set_defaults(handler=handler)
    return p


def add_group(sub: Any, name: str, help_text: str) -> Any:
    """A command with subcommands (``quotaflow quota list``); returns its subparsers."""
    group = sub.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        parents=[common_options()],
    )  # fmt: skip
    return group.add_subparsers(dest=f"{name}_command", metavar="subcommand", required=True)


def add_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=30, help="the last N days (default 30)")
    p.add_argument("--start", type=instant, help="from this ISO date/time (UTC unless offset)")
    p.add_argument("--end", type=instant, help="until this ISO date/time (default now)")
