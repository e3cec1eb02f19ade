"""The ``quotaflow`` command line.

    quotaflow migrate                         apply supabase/migrations (Supabase CLI)
    quotaflow serve --port 8080               every HTTP function on one port
    quotaflow quota set --org ORG --type daily --metric usd --limit 10
    quotaflow quota list --org ORG
    quotaflow pricing import model_prices_and_context_window.json
    quotaflow pricing list --provider openai
    quotaflow report --org ORG --days 30      summary, by model, by user, by day
    quotaflow export --org ORG --format csv --output usage.csv
    quotaflow keys create --org ORG --name backend
    quotaflow outbox status | flush

Every command takes ``--help``. The database is ``--database-url`` (before or after the
command), else ``QUOTAFLOW_DATABASE_URL``, else ``DATABASE_URL``. ``--org`` takes an
organization's id or its exact name. Exit status: 0 success, 1 error, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

from .backends import translate_db_error
from .errors import ConfigurationError, QuotaflowError, ValidationError

__all__ = ["PriceRow", "apply_migrations", "main", "parse_litellm_prices"]

PROG = "quotaflow"
LITELLM_URL = "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json"
PROGRESS_INTERVAL = 0.1
"""Seconds between redraws of the export progress bar."""
DISPLAY_DECIMALS = Decimal("0.000001")
"""Terminal tables round money to millionths (exports and --json stay exact)."""


class CliError(QuotaflowError):
    """A command cannot run as asked (printed as ``quotaflow: error: ...``, exit 1)."""

    code = "cli_error"


# ---------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
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
        return ",".join(_fmt(v) for v in value)
    return str(value)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` is (key, header); numbers right-aligned."""
    cells = [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
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


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False))


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


# ---------------------------------------------------------------------------------------
# Database access
# ---------------------------------------------------------------------------------------


def _database_url(args: argparse.Namespace) -> str:
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
def _connect(args: argparse.Namespace) -> Iterator[Any]:
    """An autocommit dict-row connection; psycopg errors become quotaflow errors."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        with psycopg.connect(_database_url(args), autocommit=True, row_factory=dict_row) as conn:
            yield conn
    except psycopg.Error as exc:
        raise translate_db_error(exc) from exc


def _resolve_org(conn: Any, org: str) -> str:
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


def _instant(text: str) -> datetime:
    """A command-line instant: ISO 8601 date or date-time (naive = UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _thresholds(text: str) -> list[Decimal]:
    if not text.strip():
        return []
    return [
        _decimal(part.strip().rstrip("%")) / (100 if "%" in part else 1) for part in text.split(",")
    ]


def _range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    end = args.end or datetime.now(timezone.utc)
    start = args.start or end - timedelta(days=args.days)
    if end < start:
        raise CliError("--end is before --start")
    return start, end


# ---------------------------------------------------------------------------------------
# migrate
# ---------------------------------------------------------------------------------------


def _workdir(explicit: str | None) -> Path:
    """The directory holding supabase/migrations: --workdir, else the nearest one above the
    current directory, else this package's source checkout."""
    if explicit:
        path = Path(explicit).resolve()
        if not (path / "supabase" / "migrations").is_dir():
            raise CliError(f"{path} has no supabase/migrations")
        return path
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (candidate / "supabase" / "migrations").is_dir():
            return candidate
    raise CliError(
        "no supabase/migrations found here or above: run in the project or pass --workdir"
    )


def _supabase_command(workdir: Path) -> list[str]:
    local = workdir / "node_modules" / ".bin" / "supabase"
    if local.exists():
        return [str(local)]
    npx = shutil.which("npx")
    if npx:
        return [npx, "--yes", "supabase"]
    raise CliError(
        "the Supabase CLI is not installed (npm ci in the project, or install npx);"
        " or use `quotaflow migrate --no-cli`"
    )


def _migrate_with_cli(url: str, workdir: Path, echo: bool) -> None:
    cmd = [*_supabase_command(workdir), "migration", "up", f"--remote={url}", "--yes"]
    cmd += ["--workdir", str(workdir)]
    proc = subprocess.run(
        cmd, cwd=workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if echo or proc.returncode != 0:
        if proc.stdout:
            print(proc.stdout, end="")
        if proc.stderr:
            print(proc.stderr, end="", file=sys.stderr)
    if proc.returncode != 0:
        raise CliError(f"supabase migration up failed (exit {proc.returncode})")


def _migrate_with_psycopg(url: str, workdir: Path, echo: bool) -> None:
    """Applies each not yet applied migration in one transaction and records it where the
    Supabase CLI does (supabase_migrations.schema_migrations), so the two can be mixed."""
    import psycopg

    files = sorted((workdir / "supabase" / "migrations").glob("*.sql"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create schema if not exists supabase_migrations")
            conn.execute(
                "create table if not exists supabase_migrations.schema_migrations"
                " (version text not null primary key, statements text[], name text)"
            )
            applied = {
                r[0]
                for r in conn.execute("select version from supabase_migrations.schema_migrations")
            }
            count = 0
            for path in files:
                version, _, name = path.stem.partition("_")
                if not version.isdigit() or version in applied:
                    continue
                if echo:
                    print(f"Applying migration {path.name}...")
                text = path.read_text(encoding="utf-8")
                with conn.transaction():
                    conn.execute(text.encode())
                    conn.execute(
                        "insert into supabase_migrations.schema_migrations"
                        " (version, statements, name) values (%s, %s, %s)",
                        (version, [text], name),
                    )
                count += 1
    except psycopg.Error as exc:
        raise CliError(f"migration failed: {exc}") from exc
    if echo:
        print(f"{count} migration(s) applied" if count else "Database is up to date.")


def apply_migrations(
    database_url: str,
    *,
    workdir: str | Path | None = None,
    use_cli: bool = True,
    echo: bool = False,
) -> None:
    """Applies supabase/migrations to a database, as ``quotaflow migrate`` does: with the
    Supabase CLI (``supabase migration up``), or with psycopg when ``use_cli`` is false.
    ``workdir`` holds supabase/ (default: found from the current directory or this checkout).
    Raises :class:`CliError` when a migration fails."""
    path = _workdir(None if workdir is None else str(workdir))
    if use_cli:
        _migrate_with_cli(database_url, path, echo)
    else:
        _migrate_with_psycopg(database_url, path, echo)


def cmd_migrate(args: argparse.Namespace) -> int:
    apply_migrations(_database_url(args), workdir=args.workdir, use_cli=not args.no_cli, echo=True)
    return 0


# ---------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from . import server
    except ImportError as exc:
        raise CliError(
            f"the local functions server is not available ({exc}); install quotaflow[functions]"
        ) from exc
    url = (
        getattr(args, "database_url", None)
        or os.environ.get("QUOTAFLOW_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    kwargs: dict[str, Any] = {"host": args.host, "database_url": url}
    if args.port is not None:
        kwargs["port"] = args.port
    server.serve(**kwargs)
    return 0


# ---------------------------------------------------------------------------------------
# quota
# ---------------------------------------------------------------------------------------

QUOTA_COLUMNS = [
    ("quota_id", "id"),
    ("name", "name"),
    ("quota_type", "window"),
    ("metric", "metric"),
    ("enforcement", "enforcement"),
    ("scope", "scope"),
    ("quota_limit", "limit"),
    ("current_usage", "used"),
    ("reserved", "reserved"),
    ("remaining", "remaining"),
    ("percent_used", "% used"),
    ("reset_at", "resets (UTC)"),
]


def _scope(row: dict[str, Any]) -> str:
    parts = [
        f"{label}={row[key]}"
        for key, label in (("user_id", "user"), ("provider", "provider"), ("model", "model"))
        if row.get(key)
    ]
    return " ".join(parts) or "organization"


def _quota_rows(conn: Any, org: str) -> list[dict[str, Any]]:
    rows = conn.execute("select * from public.get_quota_status(%s)", (org,)).fetchall()
    thresholds = {
        r["id"]: r["alert_thresholds"]
        for r in conn.execute(
            "select id, alert_thresholds from public.usage_quotas where organization_id = %s",
            (org,),
        )
    }
    return [
        {**r, "scope": _scope(r), "alert_thresholds": thresholds.get(r["quota_id"])} for r in rows
    ]


def cmd_quota_list(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        rows = _quota_rows(conn, _resolve_org(conn, args.org))
    if args.json:
        _print_json(rows)
    else:
        print(render_table(rows, QUOTA_COLUMNS))
    return 0


def cmd_quota_set(args: argparse.Namespace) -> int:
    """Creates the quota of this scope, or changes the one that exists (or --id)."""
    from .models import normalise_provider

    provider = normalise_provider(args.provider) if args.provider else None
    model = args.model.strip().lower() if args.model else None
    with _connect(args) as conn:
        org = _resolve_org(conn, args.org)
        if args.id:
            found = conn.execute(
                "select id from public.usage_quotas where id = %s and organization_id = %s",
                (args.id, org),
            ).fetchall()
            if not found:
                raise CliError(f"no quota {args.id} in organization {org}")
        else:
            found = conn.execute(
                "select id from public.usage_quotas where organization_id = %s"
                " and quota_type = %s and metric = %s and user_id is not distinct from %s"
                " and provider is not distinct from %s and model is not distinct from %s",
                (org, args.type, args.metric, args.user, provider, model),
            ).fetchall()
            if len(found) > 1:
                raise CliError(
                    f"{len(found)} quotas have this scope; choose one with --id"
                    " (see quotaflow quota list)"
                )
        values: dict[str, Any] = {"quota_limit": args.limit}
        for key, value in (
            ("enforcement", args.enforcement),
            ("name", args.name),
            ("time_zone", args.time_zone),
            ("alert_thresholds", args.thresholds),
        ):
            if value is not None:
                values[key] = value
        if found:
            quota_id = str(found[0]["id"])
            if args.id:
                values.update(quota_type=args.type, metric=args.metric)
                values.update(user_id=args.user, provider=provider, model=model)
            sets = ", ".join(f"{k} = %({k})s" for k in values)
            conn.execute(
                f"update public.usage_quotas set {sets} where id = %(id)s",
                {**values, "id": quota_id},
            )
            action = "updated"
        else:
            values.update(
                organization_id=org, quota_type=args.type, metric=args.metric,
                user_id=args.user, provider=provider, model=model,
                enforcement=args.enforcement or "hard",
            )  # fmt: skip
            names = ", ".join(values)
            marks = ", ".join(f"%({k})s" for k in values)
            row = conn.execute(
                f"insert into public.usage_quotas ({names}) values ({marks}) returning id", values
            ).fetchone()
            quota_id = str(row["id"])
            action = "created"
        rows = [r for r in _quota_rows(conn, org) if str(r["quota_id"]) == quota_id]
    print(f"quota {quota_id} {action}")
    print(render_table(rows, QUOTA_COLUMNS))
    return 0


# ---------------------------------------------------------------------------------------
# pricing
# ---------------------------------------------------------------------------------------

# LiteLLM's litellm_provider -> quotaflow provider, with a priority when two entries name the
# same model (Google AI Studio's gemini/ prices over Vertex AI's).
LITELLM_PROVIDERS: dict[str, tuple[str, int]] = {
    "openai": ("openai", 0),
    "text-completion-openai": ("openai", 1),
    "anthropic": ("anthropic", 0),
    "gemini": ("google", 0),
    "vertex_ai": ("google", 1),
    "vertex_ai-language-models": ("google", 1),
    "xai": ("xai", 0),
}
_NAME_PREFIXES = ("openai/", "anthropic/", "gemini/", "vertex_ai/", "xai/", "models/")
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.:/-]*$")
_LONG_RE = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")
PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "cache_write_usd_per_mtok",
    "long_context_threshold",
    "long_input_usd_per_mtok",
    "long_output_usd_per_mtok",
    "long_cached_input_usd_per_mtok",
    "long_cache_write_usd_per_mtok",
)


@dataclass
class PriceRow:
    """One model's prices in cost_estimates units (USD per million tokens)."""

    provider: str
    model: str
    prices: dict[str, Decimal | int | None]
    source_name: str = ""
    priority: int = 0


@dataclass
class ParsedPrices:
    rows: list[PriceRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(entry name, reason)."""


def _per_million(value: Any) -> Decimal | None:
    """Per-token USD (exact, from the JSON text) to per-million, without exponent notation."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, Decimal)):
        d = Decimal(value) * 1_000_000
    elif isinstance(value, str):
        try:
            d = Decimal(value) * 1_000_000
        except InvalidOperation:
            return None
    else:
        return None
    if not d.is_finite() or d < 0:
        return None
    return d.quantize(Decimal(1)) if d == d.to_integral_value() else d.normalize()


def parse_litellm_prices(text: str, providers: Sequence[str] | None = None) -> ParsedPrices:
    """The rows of a LiteLLM ``model_prices_and_context_window.json`` quotaflow can use:
    OpenAI, Anthropic, Google (gemini and Vertex AI Gemini) and xAI models priced per token."""
    data = json.loads(text, parse_float=Decimal)
    if not isinstance(data, dict):
        raise CliError("not a LiteLLM price file: expected a JSON object of models")
    parsed = ParsedPrices()
    chosen: dict[tuple[str, str], PriceRow] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or name == "sample_spec":
            continue
        litellm_provider = str(entry.get("litellm_provider") or "")
        mapping = LITELLM_PROVIDERS.get(litellm_provider)
        if mapping is None:
            parsed.skipped.append((name, f"provider {litellm_provider or '?'} not supported"))
            continue
        provider, priority = mapping
        if providers and provider not in providers:
            continue
        model = name.strip().lower()
        for prefix in _NAME_PREFIXES:
            model = model.removeprefix(prefix)
        if provider == "google" and not model.startswith("gemini"):
            parsed.skipped.append((name, "not a Gemini model"))
            continue
        if not _MODEL_RE.match(model):
            parsed.skipped.append((name, "model name quotaflow cannot store"))
            continue
        input_price = _per_million(entry.get("input_cost_per_token"))
        output_price = _per_million(entry.get("output_cost_per_token"))
        if output_price is None and entry.get("mode") == "embedding":
            output_price = Decimal(0)
        if input_price is None or output_price is None:
            parsed.skipped.append((name, "no per-token input and output price"))
            continue
        prices: dict[str, Decimal | int | None] = {
            "input_usd_per_mtok": input_price,
            "output_usd_per_mtok": output_price,
            "cached_input_usd_per_mtok": _per_million(entry.get("cache_read_input_token_cost")),
            "cache_write_usd_per_mtok": _per_million(entry.get("cache_creation_input_token_cost")),
            "long_context_threshold": None,
            "long_input_usd_per_mtok": None,
            "long_output_usd_per_mtok": None,
            "long_cached_input_usd_per_mtok": None,
            "long_cache_write_usd_per_mtok": None,
        }
        tiers = sorted(int(m.group(1)) for k in entry if (m := _LONG_RE.match(k)))
        for tier in tiers:
            long_input = _per_million(entry.get(f"input_cost_per_token_above_{tier}k_tokens"))
            if long_input is None:
                continue
            suffix = f"_above_{tier}k_tokens"
            prices.update(
                long_context_threshold=tier * 1000,
                long_input_usd_per_mtok=long_input,
                long_output_usd_per_mtok=_per_million(entry.get("output_cost_per_token" + suffix))
                or output_price,
                long_cached_input_usd_per_mtok=_per_million(
                    entry.get("cache_read_input_token_cost" + suffix)
                ),
                long_cache_write_usd_per_mtok=_per_million(
                    entry.get("cache_creation_input_token_cost" + suffix)
                ),
            )
            break  # one long-context tier: the lowest threshold
        row = PriceRow(provider, model, prices, name, priority)
        key = (provider, model)
        if key not in chosen or priority < chosen[key].priority:
            chosen[key] = row
    parsed.rows = sorted(chosen.values(), key=lambda r: (r.provider, r.model))
    return parsed


def _same_prices(current: dict[str, Any], new: dict[str, Any]) -> bool:
    for key in PRICE_FIELDS:
        a, b = current.get(key), new.get(key)
        if a is None or b is None:
            if a is not b:
                return False
        elif Decimal(a) != Decimal(b):
            return False
    return True


def cmd_pricing_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    try:
        parsed = parse_litellm_prices(text, args.provider)
    except json.JSONDecodeError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from exc
    counts = {"new": 0, "changed": 0, "unchanged": 0}
    changes: list[str] = []
    with _connect(args) as conn, conn.transaction(force_rollback=args.dry_run):
        for row in parsed.rows:
            rows = conn.execute(
                "select * from public.cost_estimates where provider = %s and model = %s"
                " order by effective_from",
                (row.provider, row.model),
            ).fetchall()
            current = next((r for r in rows if r["effective_to"] is None), None)
            if current is not None and _same_prices(current, row.prices):
                counts["unchanged"] += 1
                continue
            if current is None and args.only_existing:
                continue
            values = {
                **row.prices,
                "provider": row.provider,
                "model": row.model,
                "source_url": args.source_url,
                "checked_on": date.today(),
            }
            if current is not None:
                conn.execute(
                    "update public.cost_estimates set effective_to = now() where id = %s",
                    (current["id"],),
                )
                # now() is the transaction's start: the new row begins where the old one ends.
                values["effective_from"] = conn.execute("select now() as t").fetchone()["t"]
                counts["changed"] += 1
                changes.append(f"changed {row.provider}/{row.model}")
            else:
                if rows:  # only closed rows: start after the last one ended
                    values["effective_from"] = max(r["effective_to"] for r in rows)
                counts["new"] += 1
                changes.append(f"new     {row.provider}/{row.model}")
            names = ", ".join(values)
            marks = ", ".join(f"%({k})s" for k in values)
            conn.execute(f"insert into public.cost_estimates ({names}) values ({marks})", values)
    if args.verbose:
        for line in changes:
            print(line)
        for name, reason in parsed.skipped:
            print(f"skipped {name}: {reason}")
    prefix = "pricing import (dry run, nothing written)" if args.dry_run else "pricing import"
    print(
        f"{prefix}: {counts['new']} new, {counts['changed']} changed,"
        f" {counts['unchanged']} unchanged, {len(parsed.skipped)} skipped"
    )
    return 0


PRICE_COLUMNS = [
    ("provider", "provider"),
    ("model", "model"),
    ("input_usd_per_mtok", "input $/Mtok"),
    ("output_usd_per_mtok", "output $/Mtok"),
    ("cached_input_usd_per_mtok", "cached in"),
    ("cache_write_usd_per_mtok", "cache write"),
    ("long_context_threshold", "long above"),
    ("long_input_usd_per_mtok", "long in"),
    ("long_output_usd_per_mtok", "long out"),
    ("effective_from", "from (UTC)"),
]


def cmd_pricing_list(args: argparse.Namespace) -> int:
    where = ["(%(all)s or effective_to is null)"]
    params: dict[str, Any] = {"all": args.all}
    if args.provider:
        where.append("provider = any(%(provider)s)")
        params["provider"] = args.provider
    if args.model:
        where.append("model like %(model)s")
        params["model"] = "%" + args.model.lower().replace("%", r"\%").replace("_", r"\_") + "%"
    with _connect(args) as conn:
        rows = conn.execute(
            "select * from public.cost_estimates where "
            + " and ".join(where)
            + " order by provider, model, effective_from",
            params,
        ).fetchall()
    if args.json:
        _print_json(rows)
        return 0
    columns = PRICE_COLUMNS + ([("effective_to", "to (UTC)")] if args.all else [])
    print(render_table(rows, columns))
    return 0


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------

SECTIONS = ("summary", "model", "user", "day")


def cmd_report(args: argparse.Namespace) -> int:
    start, end = _range(args)
    sections = args.section or list(SECTIONS)
    out: dict[str, Any] = {}
    with _connect(args) as conn:
        org = _resolve_org(conn, args.org)
        org_row = conn.execute(
            "select name, coalesce(display_currency, 'USD') as currency"
            " from public.organizations where id = %s",
            (org,),
        ).fetchone()
        org_name, currency = org_row["name"], org_row["currency"]
        if "summary" in sections:
            out["summary"] = conn.execute(
                "select * from public.usage_summary(%s, %s, %s)", (org, start, end)
            ).fetchone()
        if "model" in sections:
            out["model"] = conn.execute(
                "select * from public.model_performance(%s, %s, %s)", (org, start, end)
            ).fetchall()
        if "user" in sections:
            out["user"] = conn.execute(
                "select * from public.top_users(%s, %s, %s, %s)", (org, start, end, args.top)
            ).fetchall()
        if "day" in sections:
            out["day"] = conn.execute(
                "select * from public.usage_by_day(%s, %s, %s)", (org, start, end)
            ).fetchall()
    if args.json:
        _print_json({"organization_id": org, "start": start, "end": end, **out})
        return 0
    print(f"Usage of {org_name} ({org})")
    print(f"from {_fmt(start)} to {_fmt(end)}")
    summary = out.get("summary")
    if summary is not None:
        print("\nSummary")
        items = [
            ("requests", summary["requests"]),
            ("successful", summary["successful_requests"]),
            ("failed", summary["failed_requests"]),
            ("input tokens", summary["input_tokens"]),
            ("output tokens", summary["output_tokens"]),
            ("cached input tokens", summary["cached_input_tokens"]),
            ("total tokens", summary["total_tokens"]),
            ("cost (USD)", summary["cost_usd"]),
            (f"cost ({currency})", summary["cost_display"]),
            ("credits", summary["credits"]),
            ("average cost (USD)", summary["avg_cost_usd"]),
            ("average latency (ms)", summary["avg_latency_ms"]),
        ]
        if currency == "USD":
            items.pop(8)
        width = max(len(k) for k, _ in items)
        for key, value in items:
            if value is None:
                shown = "n/a (no exchange rate)" if key == f"cost ({currency})" else "-"
            else:
                shown = _fmt(value)
            print(f"  {key.ljust(width)}  {shown}")
    if "model" in out:
        print("\nBy model")
        print(
            render_table(
                out["model"],
                [
                    ("provider", "provider"), ("model", "model"), ("requests", "requests"),
                    ("error_rate", "error rate"), ("total_tokens", "tokens"),
                    ("cost_usd", "cost USD"), ("avg_cost_usd", "avg cost"),
                    ("avg_latency_ms", "avg ms"), ("p50_latency_ms", "p50 ms"),
                    ("p95_latency_ms", "p95 ms"),
                ],
            )
        )  # fmt: skip
    if "user" in out:
        print(f"\nBy user (top {args.top})")
        print(
            render_table(
                out["user"],
                [
                    ("rank", "#"), ("user_id", "user"), ("requests", "requests"),
                    ("failed_requests", "failed"), ("total_tokens", "tokens"),
                    ("cost_usd", "cost USD"), ("credits", "credits"), ("cost_share", "share"),
                ],
            )
        )  # fmt: skip
    if "day" in out:
        print("\nBy day")
        print(
            render_table(
                out["day"],
                [
                    ("day", "day"), ("requests", "requests"), ("failed_requests", "failed"),
                    ("total_tokens", "tokens"), ("cost_usd", "cost USD"),
                    ("cost_display", f"cost {currency}"), ("credits", "credits"),
                ],
            )
        )  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from .analytics import UsageFilters, count_records, export
    from .backends import PostgresBackend

    url = _database_url(args)
    with _connect(args) as conn:
        org = _resolve_org(conn, args.org)
    try:
        filters = UsageFilters(
            organization_id=org,
            user_id=args.user,
            conversation_id=args.conversation,
            provider=args.provider,
            model=args.model,
            success=args.success,
            start=args.start,
            end=args.end,
            tags=args.tag or None,
        )
    except ValueError as exc:
        raise ValidationError(f"invalid filters: {exc}") from exc
    backend = PostgresBackend(url, min_size=1, max_size=1)
    to_stdout = args.output in (None, "-")
    try:
        show_progress = not args.no_progress
        total = count_records(backend, filters) if show_progress else None
        bar = ProgressBar(total, sys.stderr) if show_progress else None
        progress: Callable[[int], None] | None = bar.update if bar is not None else None
        if to_stdout:
            n = export(backend, filters, args.format, sys.stdout, progress=progress)
            sys.stdout.flush()
        else:
            target = Path(args.output)
            partial = target.with_name(target.name + ".partial")
            with partial.open("w", encoding="utf-8", newline="") as out:
                n = export(backend, filters, args.format, out, progress=progress)
            partial.replace(target)
        if bar is not None:
            bar.finish()
    finally:
        backend.close()
    where = "stdout" if to_stdout else args.output
    print(f"exported {n:,} rows ({args.format}) to {where}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------
# keys, outbox: other modules' features, imported when used
# ---------------------------------------------------------------------------------------


def _auth_module() -> Any:
    try:
        from . import auth
    except ImportError as exc:
        raise CliError(f"API keys are not available in this installation ({exc})") from exc
    for name in ("create_api_key", "revoke_api_key"):
        if not hasattr(auth, name):
            raise CliError(f"API keys are not available: quotaflow.auth has no {name}")
    return auth


def cmd_keys_create(args: argparse.Namespace) -> int:
    auth = _auth_module()
    with _connect(args) as conn:
        org = _resolve_org(conn, args.org)
        key_id, key = auth.create_api_key(conn, org, args.name, expires_at=args.expires_at)
    if args.json:
        _print_json({"key_id": key_id, "organization_id": org, "name": args.name, "key": key})
        return 0
    print(f"API key {key_id} created for organization {org}")
    print(f"  name: {args.name}")
    if args.expires_at:
        print(f"  expires: {_fmt(args.expires_at)}")
    print(f"  key:  {key}")
    print("Store the key now: it is shown once and cannot be recovered.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    auth = _auth_module()
    with _connect(args) as conn:
        org = _resolve_org(conn, args.org) if args.org else None
        revoked = auth.revoke_api_key(conn, args.key_id, organization_id=org)
    if not revoked:
        raise CliError(f"no active API key {args.key_id}" + (f" in {org}" if org else ""))
    print(f"API key {args.key_id} revoked")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    auth = _auth_module()
    if not hasattr(auth, "list_api_keys"):
        raise CliError("listing API keys is not available: quotaflow.auth has no list_api_keys")
    with _connect(args) as conn:
        keys = auth.list_api_keys(conn, _resolve_org(conn, args.org))
    rows = [
        {
            "key_id": k.key_id,
            "name": k.name,
            "key_prefix": k.key_prefix,
            "created_at": k.created_at,
            "expires_at": k.expires_at,
            "last_used_at": k.last_used_at,
            "status": "active" if k.active else "revoked" if k.revoked_at else "expired",
        }
        for k in keys
    ]
    if args.json:
        _print_json(rows)
    else:
        print(
            render_table(
                rows,
                [
                    ("key_id", "id"), ("name", "name"), ("key_prefix", "prefix"),
                    ("status", "status"), ("created_at", "created (UTC)"),
                    ("expires_at", "expires"), ("last_used_at", "last used"),
                ],
            )
        )  # fmt: skip
    return 0


def _outbox_module() -> Any:
    try:
        from . import outbox
    except ImportError as exc:
        raise CliError(f"the outbox is not available in this installation ({exc})") from exc
    if not hasattr(outbox, "Outbox"):
        raise CliError("the outbox is not available: quotaflow.outbox has no Outbox")
    return outbox


def cmd_outbox_status(args: argparse.Namespace) -> int:
    outbox = _outbox_module()
    box = outbox.Outbox(None, args.path)  # status reads the file only; no backend needed
    status = box.status()
    if args.json:
        _print_json(status)
    else:
        width = max(len(k) for k in status)
        for key, value in status.items():
            print(f"{key.ljust(width)}  {_fmt(value)}")
    return 0


def cmd_outbox_flush(args: argparse.Namespace) -> int:
    outbox = _outbox_module()
    from .backends import HttpBackend, PostgresBackend

    url = (
        getattr(args, "database_url", None)
        or os.environ.get("QUOTAFLOW_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    # A connection attempt must not outlast the flush's own time budget.
    wait = max(1.0, min(10.0, args.timeout))
    backend: Any = (
        PostgresBackend(url, max_size=2, timeout=wait) if url else HttpBackend(timeout=wait)
    )
    box = outbox.Outbox(backend, args.path)
    before = box.pending()
    try:
        drained = box.flush(args.timeout)
        left = box.pending()
        if not left:
            box.close(timeout=0)  # nothing left to drain: just stops and closes
    finally:
        backend.close()
    print(f"delivered {before - left} event(s); {left} still pending")
    if not drained:
        raise CliError(f"{left} event(s) could not be delivered within {args.timeout:g} s")
    return 0


# ---------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="Postgres URL (default: $QUOTAFLOW_DATABASE_URL, then $DATABASE_URL)",
    )
    return common


def _add_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=int, default=30, help="the last N days (default 30)")
    p.add_argument("--start", type=_instant, help="from this ISO date/time (UTC unless offset)")
    p.add_argument("--end", type=_instant, help="until this ISO date/time (default now)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Track, price and cap AI API calls: database, pricing, quotas, reports.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)

    def command(
        parent: Any, name: str, help_text: str, handler: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text, parents=[common]
        )
        p.set_defaults(handler=handler)
        return p

    p = command(sub, "migrate", "apply supabase/migrations to the database", cmd_migrate)
    p.add_argument("--workdir", help="project directory holding supabase/ (default: found)")
    p.add_argument(
        "--no-cli",
        action="store_true",
        help="load the SQL files with psycopg instead of `supabase migration up`",
    )

    p = command(sub, "serve", "serve every HTTP function on one port (local use)", cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")

    quota = sub.add_parser(
        "quota", help="show and set quotas", description="Show and set quotas.", parents=[common]
    )
    qsub = quota.add_subparsers(dest="quota_command", metavar="subcommand", required=True)
    p = command(qsub, "list", "list an organization's quotas with usage and reset time",
                cmd_quota_list)  # fmt: skip
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        qsub,
        "set",
        "create the quota of a scope, or change the existing one",
        cmd_quota_set,
    )
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--id", help="change this quota (scope options then replace its scope)")
    p.add_argument(
        "--type",
        "--window",
        dest="type",
        required=True,
        choices=["minute", "hourly", "daily", "weekly", "monthly", "total"],
        help="the window",
    )
    p.add_argument("--metric", default="usd", choices=["usd", "tokens", "requests"])
    p.add_argument("--limit", required=True, type=_decimal, help="the limit, in the metric")
    p.add_argument("--enforcement", choices=["hard", "soft"], help="default hard")
    p.add_argument("--user", help="only this app user id")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--model", help="only this model")
    p.add_argument("--name", help="a label")
    p.add_argument("--time-zone", help="IANA time zone of the window (default: the org's)")
    p.add_argument(
        "--thresholds",
        type=_thresholds,
        help="alert thresholds, fractions or percents: 0.8,1.0 or 50%%,90%% ('' = none)",
    )

    pricing = sub.add_parser(
        "pricing", help="list and import model prices", description="List and import model prices.",
        parents=[common],
    )  # fmt: skip
    psub = pricing.add_subparsers(dest="pricing_command", metavar="subcommand", required=True)
    p = command(psub, "list", "list current prices (USD per million tokens)", cmd_pricing_list)
    p.add_argument("--provider", action="append", help="only this provider (repeatable)")
    p.add_argument("--model", help="only models whose name contains this")
    p.add_argument("--all", action="store_true", help="include closed (past) prices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(
        psub,
        "import",
        "import LiteLLM's model_prices_and_context_window.json: changed prices close the old"
        " row and open a new one, unchanged rows are left alone",
        cmd_pricing_import,
    )
    p.add_argument("file", help="path to model_prices_and_context_window.json")
    p.add_argument(
        "--provider",
        action="append",
        choices=["openai", "anthropic", "google", "xai"],
        help="only this provider (repeatable)",
    )
    p.add_argument("--only-existing", action="store_true", help="update known models only")
    p.add_argument("--dry-run", action="store_true", help="count, write nothing")
    p.add_argument("--source-url", default=LITELLM_URL, help="recorded as each row's source")
    p.add_argument("-v", "--verbose", action="store_true", help="list each change and skip")

    p = command(sub, "report", "usage report: summary, by model, by user, by day", cmd_report)
    p.add_argument("--org", required=True, help="organization id or exact name")
    _add_range(p)
    p.add_argument(
        "--section", action="append", choices=SECTIONS, help="only these sections (repeatable)"
    )
    p.add_argument("--top", type=int, default=10, help="users in the by-user table (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "export", "export usage-log rows as CSV, JSON or JSON Lines", cmd_export)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--format", choices=["csv", "json", "jsonl"], default="csv")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument("--user", help="only this app user id")
    p.add_argument("--conversation", help="only this conversation id")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--model", help="only this model (as called)")
    status = p.add_mutually_exclusive_group()
    status.add_argument("--success", dest="success", action="store_const", const=True)
    status.add_argument("--failed", dest="success", action="store_const", const=False)
    p.add_argument("--start", type=_instant, help="calls at or after this ISO date/time")
    p.add_argument("--end", type=_instant, help="calls before this ISO date/time")
    p.add_argument("--tag", action="append", help="only calls with this tag (repeatable: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    keys = sub.add_parser(
        "keys", help="organization API keys", description="Organization API keys.",
        parents=[common],
    )  # fmt: skip
    ksub = keys.add_subparsers(dest="keys_command", metavar="subcommand", required=True)
    p = command(ksub, "create", "create an API key (shown once)", cmd_keys_create)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--expires-at", type=_instant, help="ISO date/time the key stops working")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(ksub, "revoke", "revoke an API key at once", cmd_keys_revoke)
    p.add_argument("key_id", help="the key's id (from keys create / keys list)")
    p.add_argument("--org", help="only if it belongs to this organization")
    p = command(ksub, "list", "list an organization's API keys", cmd_keys_list)
    p.add_argument("--org", required=True, help="organization id or exact name")
    p.add_argument("--json", action="store_true", help="print JSON")

    outbox = sub.add_parser(
        "outbox", help="the local outbox of undelivered usage events",
        description="The local outbox of usage events not yet delivered.", parents=[common],
    )  # fmt: skip
    osub = outbox.add_subparsers(dest="outbox_command", metavar="subcommand", required=True)
    p = command(osub, "status", "pending and dead events, oldest age, last error",
                cmd_outbox_status)  # fmt: skip
    p.add_argument("--path", help="outbox file (default: $QUOTAFLOW_OUTBOX_PATH or ~/.quotaflow)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(osub, "flush", "deliver every pending event now", cmd_outbox_flush)
    p.add_argument("--path", help="outbox file (default: $QUOTAFLOW_OUTBOX_PATH or ~/.quotaflow)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to keep trying")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except QuotaflowError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
