"""Usage analytics over the Postgres backend: records, aggregates, streaming export, alerts.

Seed 002's ``UsageTracker`` queries, on ``api_usage_logs``::

    filters = UsageFilters(organization_id=ORG, user_id="user-123", success=True)
    records = tracker.get_records(filters, limit=50)
    stats = tracker.get_aggregated(filters, group_by="model")   # totals + one group per model
    with open("usage.csv", "w", newline="") as f:
        tracker.export("csv", filters, f)                      # streamed, flat memory

* :func:`get_records` — log rows as :class:`~quotaflow.models.UsageRecord`, newest first;
* :func:`get_aggregated` — :class:`AggregatedUsage`: requests (successful/failed), tokens,
  cost, credits, average cost and duration, overall and per provider / model / user /
  conversation / session / workflow / date (the organization's local day), in one scan;
* :func:`export` — JSON, JSON Lines or CSV written to a text stream batch by batch from a
  server-side cursor, so a million rows never sit in memory; returns the row count;
* :class:`AlertListener` — LISTENs on ``quotaflow_alerts`` (see the alerts migration) on its own
  connection in a background thread and calls registered callbacks with a :class:`QuotaAlert`.

:class:`~quotaflow.Tracker` and :class:`~quotaflow.AsyncTracker` (awaited) carry them as
methods (``tracker.get_records(filters)``, ``tracker.on_alert(callback)``). They need the
Postgres backend; the HTTP backend raises :class:`~quotaflow.errors.ConfigurationError`.
Filters are applied in SQL; ``start`` is inclusive and ``end`` exclusive (instants; naive
datetimes are UTC). Money is ``Decimal``; in JSON and CSV exports it is written as an exact
decimal string.

The SQL reports (``usage_summary``, ``usage_by_day``, ``model_performance``, ... in the reports
migration) cover the dashboard-style views, with costs in the display currency too.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from .._db import db_cursor
from ..backends import Backend, PostgresBackend, record_from_row, translate_db_error
from ..errors import ConfigurationError, QuotaflowError, ValidationError
from ..models import UsageRecord, camel, normalise_provider

if TYPE_CHECKING:
    from psycopg import sql as pgsql

__all__ = [
    "ALERT_CHANNEL",
    "EXPORT_COLUMNS",
    "AggregatedUsage",
    "AlertListener",
    "AlertsMixin",
    "ExportFormat",
    "GroupBy",
    "QuotaAlert",
    "UsageFilters",
    "UsageGroup",
    "UsageTotals",
    "count_records",
    "export",
    "get_aggregated",
    "get_alerts",
    "get_records",
]

log = logging.getLogger("quotaflow.reports")

ExportFormat = Literal["json", "jsonl", "csv"]
GroupBy = Literal["provider", "model", "user", "conversation", "session", "workflow", "date"]

MAX_RECORDS = 10_000
"""Most rows one get_records call returns; page with offset, or use export for more."""
EXPORT_BATCH_SIZE = 5_000
"""Rows fetched from the server-side cursor per round trip during an export."""

ALERT_CHANNEL = "quotaflow_alerts"
"""The pg_notify channel of the alerts migration's trigger."""
ALERT_POLL_SECONDS = 0.25
"""How often the listener thread looks up from waiting to see whether it should stop."""
ALERT_RECONNECT_INITIAL_DELAY = 0.5
ALERT_RECONNECT_MULTIPLIER = 2.0
ALERT_RECONNECT_MAX_DELAY = 30.0
ALERT_START_TIMEOUT = 10.0
"""Seconds AlertListener.start waits for LISTEN to be in place."""
ALERT_APPLICATION_NAME = "quotaflow-alerts"
"""The listener connection's application_name (pg_stat_activity)."""
_ALERT_DEDUP_WINDOW = 1_000

#: The columns of an export, in order (CSV header; keys of each JSON object).
EXPORT_COLUMNS: tuple[str, ...] = (
    "id",
    "request_id",
    "organization_id",
    "occurred_at",
    "user_id",
    "session_id",
    "workflow_id",
    "conversation_id",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "credits",
    "unpriced",
    "priced_model",
    "success",
    "latency_ms",
    "finish_reason",
    "error_code",
    "error_message",
    "usage_estimated",
    "usage_details",
    "service_tier",
    "tags",
    "metadata",
    "price_id",
    "recorded_at",
)


# ---------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------


class UsageFilters(BaseModel):
    """Which usage-log rows a query covers; every field but the organization is optional.

    Accepts seed 002's camelCase too (``userId``, ``conversationId``, ``startDate``).
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=camel)

    organization_id: str = Field(min_length=1)
    user_id: str | None = None
    """The app's own end-user id, exactly as logged."""
    conversation_id: str | None = None
    session_id: str | None = None
    workflow_id: str | None = None
    provider: str | None = None
    """openai, anthropic, google or xai (aliases such as gemini are normalised)."""
    model: str | None = None
    """The model name as called (gpt-4o-2024-08-06 matches only itself)."""
    success: bool | None = None
    """True: successful calls only; False: failed calls only."""
    start: datetime | None = Field(
        default=None, validation_alias=AliasChoices("start", "start_date", "startDate")
    )
    """Calls made at or after this instant (a date means its midnight UTC)."""
    end: datetime | None = Field(
        default=None, validation_alias=AliasChoices("end", "end_date", "endDate")
    )
    """Calls made before this instant (exclusive)."""
    tags: list[str] | None = None
    """Calls carrying every one of these tags."""

    @field_validator("organization_id")
    @classmethod
    def _org_is_uuid(cls, v: str) -> str:
        try:
            return str(uuid.UUID(v))
        except ValueError:
            raise ValueError(f"organization_id must be a UUID, got {v!r}") from None

    @field_validator("provider")
    @classmethod
    def _norm_provider(cls, v: str | None) -> str | None:
        return None if v is None else normalise_provider(v)

    @field_validator("model")
    @classmethod
    def _norm_model(cls, v: str | None) -> str | None:
        return None if v is None else v.strip().lower()

    @field_validator("start", "end", mode="before")
    @classmethod
    def _instant(cls, v: Any) -> Any:
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime(v.year, v.month, v.day, tzinfo=timezone.utc)
        return v

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=timezone.utc)
        return v


def _as_filters(filters: UsageFilters | dict[str, Any]) -> UsageFilters:
    if isinstance(filters, UsageFilters):
        return filters
    try:
        return UsageFilters.model_validate(filters)
    except ValueError as exc:
        raise ValidationError(f"invalid usage filters: {exc}", field="filters") from exc


def _where(f: UsageFilters) -> tuple[pgsql.Composed, dict[str, Any]]:
    """The WHERE clause (on alias ``l``) and its parameters for a set of filters."""
    from psycopg import sql

    parts: list[pgsql.Composable] = [sql.SQL("l.organization_id = %(organization_id)s")]
    params: dict[str, Any] = {"organization_id": f.organization_id}
    for name in ("user_id", "conversation_id", "session_id", "workflow_id", "provider", "model"):
        value = getattr(f, name)
        if value is not None:
            parts.append(sql.SQL("l.{} = %({})s").format(sql.Identifier(name), sql.SQL(name)))
            params[name] = value
    if f.success is not None:
        parts.append(sql.SQL("l.success = %(success)s"))
        params["success"] = f.success
    if f.start is not None:
        parts.append(sql.SQL("l.occurred_at >= %(start)s"))
        params["start"] = f.start
    if f.end is not None:
        parts.append(sql.SQL("l.occurred_at < %(end)s"))
        params["end"] = f.end
    if f.tags:
        parts.append(sql.SQL("l.tags @> %(tags)s::text[]"))
        params["tags"] = list(f.tags)
    return sql.SQL(" and ").join(parts), params


def _postgres(backend: Any) -> PostgresBackend:
    if isinstance(backend, PostgresBackend):
        return backend
    raise ConfigurationError(
        "analytics need the Postgres backend (records, aggregates, exports and alerts are read"
        f" from the database directly); got {type(backend).__name__}: configure database_url"
        " / QUOTAFLOW_DATABASE_URL"
    )


def _rows(backend: Any, query: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    with db_cursor(_postgres(backend)) as cur:
        return list(cur.execute(query, params).fetchall())


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------


def get_records(
    backend: Any,
    filters: UsageFilters | dict[str, Any],
    limit: int = 100,
    offset: int = 0,
) -> list[UsageRecord]:
    """The matching log rows, newest first (``limit`` at most :data:`MAX_RECORDS`)."""
    from psycopg import sql

    f = _as_filters(filters)
    if not 0 <= limit <= MAX_RECORDS:
        raise ValidationError(f"limit must be between 0 and {MAX_RECORDS}", field="limit")
    if offset < 0:
        raise ValidationError("offset must not be negative", field="offset")
    where, params = _where(f)
    query = sql.SQL(
        "select l.* from public.api_usage_logs l where {}"
        " order by l.occurred_at desc, l.id desc limit %(limit)s offset %(offset)s"
    ).format(where)
    rows = _rows(backend, query, {**params, "limit": limit, "offset": offset})
    return [record_from_row(r) for r in rows]


def count_records(backend: Any, filters: UsageFilters | dict[str, Any]) -> int:
    """How many log rows match (e.g. for an export's progress bar)."""
    from psycopg import sql

    where, params = _where(_as_filters(filters))
    query = sql.SQL("select count(*) as n from public.api_usage_logs l where {}").format(where)
    return int(_rows(backend, query, params)[0]["n"])


# ---------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------


class UsageTotals(BaseModel):
    """Totals over a set of calls (seed 002's AggregatedUsage figures), named as the columns of
    the SQL report functions (``usage_summary``, ``usage_aggregate``, ...)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", alias_generator=camel)

    requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    input_tokens: int = 0
    """Prompt tokens, cached and cache-write tokens included."""
    output_tokens: int = 0
    """Completion tokens, reasoning included."""
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    credits: Decimal = Decimal(0)
    cost_display: Decimal | None = None
    """cost_usd in the organization's display currency (USD without one) at the rates in
    force; None when a rate is missing."""
    avg_cost_usd: Decimal | None = None
    """None when there were no calls."""
    avg_latency_ms: Decimal | None = None
    """Mean latency of the calls that reported one, to 0.1 ms."""
    first_at: datetime | None = None
    last_at: datetime | None = None


class UsageGroup(UsageTotals):
    """The totals of one value of the grouping (key None: calls without that value)."""

    key: str | None


class AggregatedUsage(UsageTotals):
    """Overall totals plus, when grouped, one :class:`UsageGroup` per value.

    Groups come most expensive first, except by date (oldest first).
    """

    group_by: GroupBy | None = None
    groups: list[UsageGroup] = Field(default_factory=list)

    def by_key(self) -> dict[str | None, UsageGroup]:
        """The groups keyed by their value (seed 002's ``byModel``, ``byUser``, ...)."""
        return {g.key: g for g in self.groups}


_GROUP_BY: tuple[str, ...] = get_args(GroupBy)

_AGGREGATE_SQL = """
select * from public.usage_aggregate(
  organization_id => %(organization_id)s, start_at => %(start)s, end_at => %(end)s,
  group_by => %(group_by)s, user_id => %(user_id)s, provider => %(provider)s,
  model => %(model)s, conversation_id => %(conversation_id)s, session_id => %(session_id)s,
  workflow_id => %(workflow_id)s, success => %(success)s, tags => %(tags)s::text[])
"""


def get_aggregated(
    backend: Any,
    filters: UsageFilters | dict[str, Any],
    group_by: GroupBy | None = None,
) -> AggregatedUsage:
    """Totals of the matching calls and, with ``group_by``, per provider, model, user,
    conversation, session, workflow or date (the organization's local day, ``YYYY-MM-DD``):
    the SQL report ``usage_aggregate``, one scan of the log either way."""
    f = _as_filters(filters)
    if group_by is not None and group_by not in _GROUP_BY:
        raise ValidationError(
            f"group_by must be one of {', '.join(_GROUP_BY)} or None, got {group_by!r}",
            field="group_by",
        )
    params = {**f.model_dump(), "group_by": group_by}
    rows = _rows(backend, _AGGREGATE_SQL, params)
    fields = set(UsageTotals.model_fields)
    total = next(r for r in rows if r["is_total"])
    return AggregatedUsage(
        group_by=group_by,
        **{k: v for k, v in total.items() if k in fields},
        groups=[
            UsageGroup(key=r["key"], **{k: v for k, v in r.items() if k in fields})
            for r in rows
            if not r["is_total"]
        ],
    )


# ---------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-safe value: exact decimals as strings, instants in ISO 8601, ids as text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is a formula to a spreadsheet (CSV injection)."""


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str):
        # Shown as typed, never evaluated: the quote is what spreadsheets themselves add.
        return "'" + value if value.startswith(CSV_FORMULA_PREFIXES) else value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _plain(value)


class _Writer:
    """Writes rows (tuples in EXPORT_COLUMNS order) in one format to a text stream."""

    def __init__(self, fmt: ExportFormat, out: IO[str]) -> None:
        self.fmt = fmt
        self.out = out
        self.count = 0
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None

    def start(self) -> None:
        if self._csv is not None:
            self._csv.writerow(EXPORT_COLUMNS)
        elif self.fmt == "json":
            self.out.write("[")

    def rows(self, rows: Iterable[Sequence[Any]]) -> None:
        if self._csv is not None:
            self._csv.writerows([_csv_cell(v) for v in row] for row in rows)
            return
        parts: list[str] = []
        for row in rows:
            text = json.dumps(
                {c: _plain(v) for c, v in zip(EXPORT_COLUMNS, row, strict=True)},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            if self.fmt == "jsonl":
                parts.append(text + "\n")
            else:
                parts.append(("\n" if self.count + len(parts) == 0 else ",\n") + text)
        self.count += len(parts)
        self.out.write("".join(parts))

    def finish(self) -> None:
        if self.fmt == "json":
            self.out.write("\n]\n" if self.count else "]\n")


def export(
    backend: Any,
    filters: UsageFilters | dict[str, Any],
    format: ExportFormat = "json",
    out: IO[str] | None = None,
    *,
    batch_size: int = EXPORT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Streams the matching rows (oldest first) to ``out``; returns how many were written.

    ``json``: one array, one object per line; ``jsonl``: one object per line; ``csv``: a header
    of :data:`EXPORT_COLUMNS` then one row per call (tags and metadata as JSON, booleans
    ``true``/``false``, empty cells for null, and a text cell that a spreadsheet would evaluate
    — starting with ``= + - @``, a tab or CR — prefixed with ``'``). Rows come from a
    server-side cursor in batches of ``batch_size`` inside one read-only transaction (one
    consistent snapshot), so memory stays flat however many rows match.
    ``progress(rows_written)`` is called after every batch.
    """
    from psycopg import sql
    from psycopg.rows import tuple_row

    if format not in ("json", "jsonl", "csv"):
        raise ValidationError(
            f"export format must be json, jsonl or csv, got {format!r}", field="format"
        )
    if out is None:
        raise ValidationError("export needs a writable text stream (out)", field="out")
    if batch_size < 1:
        raise ValidationError("batch_size must be at least 1", field="batch_size")
    pg = _postgres(backend)
    where, params = _where(_as_filters(filters))
    query = sql.SQL(
        "select {cols} from public.api_usage_logs l where {where} order by l.occurred_at, l.id"
    ).format(
        cols=sql.SQL(", ").join(sql.SQL("l.") + sql.Identifier(c) for c in EXPORT_COLUMNS),
        where=where,
    )
    writer = _Writer(format, out)
    written = 0
    try:
        with pg.connection() as conn, conn.transaction():
            conn.execute("set transaction read only")
            with conn.cursor(
                name=f"quotaflow_export_{uuid.uuid4().hex}", row_factory=tuple_row
            ) as cur:
                cur.itersize = batch_size
                cur.execute(query, params)
                writer.start()
                while True:
                    batch = cur.fetchmany(batch_size)
                    if not batch:
                        break
                    writer.rows(batch)
                    written += len(batch)
                    if progress is not None:
                        progress(written)
                writer.finish()
    except QuotaflowError:
        raise
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.Error):
            raise translate_db_error(exc) from exc
        raise
    return written


# ---------------------------------------------------------------------------------------
# Alerts
# ---------------------------------------------------------------------------------------


class QuotaAlert(BaseModel):
    """A quota crossed one of its alert thresholds (a row of ``quota_alerts``)."""

    model_config = ConfigDict(extra="ignore")

    alert_id: int
    quota_id: str
    organization_id: str
    quota_name: str | None = None
    quota_type: str
    """minute, hourly, daily, weekly, monthly or total."""
    metric: str
    """usd, tokens or requests."""
    enforcement: str | None = None
    user_id: str | None = None
    provider: str | None = None
    model: str | None = None
    threshold: Decimal
    """The fraction of the limit crossed (0.8 = 80%)."""
    quota_limit: Decimal
    usage: Decimal
    """The quota's usage right after the crossing call."""
    window_start: datetime
    reset_at: datetime | None = None
    """When the window (and so the alert's period) ends; None for total quotas."""
    created_at: datetime

    @property
    def percent_used(self) -> Decimal:
        if self.quota_limit == 0:
            return Decimal(100)
        return (100 * self.usage / self.quota_limit).quantize(Decimal("0.01"))


_ALERTS_SQL = """
select a.id as alert_id, a.quota_id::text, a.organization_id::text, q.name as quota_name,
       a.quota_type, a.metric, q.enforcement, q.user_id, q.provider, q.model, a.threshold,
       a.quota_limit, a.usage, a.window_start, a.reset_at, a.created_at
from public.quota_alerts a
join public.usage_quotas q on q.id = a.quota_id
"""


def get_alerts(
    backend: Any,
    organization_id: str,
    *,
    since: datetime | None = None,
    limit: int = 100,
) -> list[QuotaAlert]:
    """The organization's recorded alerts, newest first."""
    query = (
        _ALERTS_SQL
        + " where a.organization_id = %(org)s"
        + " and (%(since)s::timestamptz is null or a.created_at >= %(since)s)"
        + " order by a.created_at desc, a.id desc limit %(limit)s"
    )
    rows = _rows(backend, query, {"org": organization_id, "since": since, "limit": limit})
    return [QuotaAlert.model_validate(r) for r in rows]


AlertCallback = Callable[[QuotaAlert], Any]


class AlertListener:
    """Calls back on every quota alert, from a background thread with its own connection.

    A notification on ``quotaflow_alerts`` carries only the quota's and organization's ids
    (any role may LISTEN on any channel); the listener then reads the new alerts of that quota
    from ``quota_alerts``, so its role sees only what RLS lets it (the service: every
    organization; a member: theirs). The role must be able to read ``quota_alerts``.

    The connection is a plain (non-pooled) one: LISTEN only hears notifications on the
    session that issued it, and a pooled connection goes back to other users. When the
    connection breaks, the listener reconnects with backoff and first delivers the alerts
    recorded meanwhile (those with an id above the last one seen, read from ``quota_alerts``:
    the role must be able to read it), then listens again; an alert is delivered once. Only
    alerts recorded after :meth:`start` are delivered. Callbacks run in the listener thread,
    one at a time; a
    coroutine a callback returns runs on the event loop that was running when it was
    registered (else with ``asyncio.run``). A callback that raises is logged and skipped.
    """

    def __init__(self, database_url: str, *, channel: str = ALERT_CHANNEL) -> None:
        self._url = database_url
        self._channel = channel
        self._callbacks: list[
            tuple[AlertCallback, str | None, asyncio.AbstractEventLoop | None]
        ] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_id = 0
        self._start_id = 0
        """Alerts up to this id were recorded before the listener started: never delivered."""
        self._seen_by_quota: dict[str, int] = {}
        self._can_catch_up = True
        self._seen: deque[int] = deque(maxlen=_ALERT_DEDUP_WINDOW)
        self._seen_set: set[int] = set()

    def add(
        self,
        callback: AlertCallback,
        *,
        organization_id: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> AlertCallback:
        """Registers a callback (for one organization's alerts, or all)."""
        with self._lock:
            self._callbacks.append((callback, organization_id, loop))
        return callback

    def remove(self, callback: AlertCallback) -> None:
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c[0] is not callback]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = ALERT_START_TIMEOUT) -> AlertListener:
        """Starts the thread and waits until it listens (alerts after this are not missed)."""
        if self.running:
            return self
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="quotaflow-alerts", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigurationError(
                f"alert listener could not LISTEN on {self._channel} within {timeout:g} s"
                " (is the database reachable?)"
            )
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops listening and closes the connection."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> AlertListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row

        delay = ALERT_RECONNECT_INITIAL_DELAY
        connected_before = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    row_factory=dict_row,
                    application_name=ALERT_APPLICATION_NAME,
                ) as conn:
                    conn.execute(sql.SQL("listen {}").format(sql.Identifier(self._channel)))
                    if connected_before:
                        self._catch_up(conn)
                    else:
                        self._last_id = self._start_id = self._latest_id(conn)
                    connected_before = True
                    self._ready.set()
                    delay = ALERT_RECONNECT_INITIAL_DELAY
                    while not self._stop.is_set():
                        # Collected first: the connection is busy while notifies() iterates.
                        notes = list(conn.notifies(timeout=ALERT_POLL_SECONDS, stop_after=1))
                        self._read_notified(conn, [n.payload for n in notes])
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                log.warning(
                    "alert listener lost its connection (%s); retrying in %.1f s", exc, delay
                )
                self._stop.wait(delay)
                delay = min(delay * ALERT_RECONNECT_MULTIPLIER, ALERT_RECONNECT_MAX_DELAY)

    def _read_notified(self, conn: Any, payloads: list[str]) -> None:
        """A notification names a quota (opaque ids only): its new alerts are read from
        quota_alerts, as this connection's role may see them, and dispatched in order."""
        quotas: dict[str, str] = {}
        for payload in payloads:
            try:
                note = json.loads(payload)
                quotas[str(uuid.UUID(note["quota_id"]))] = str(note["organization_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed %s notification: %.200s", self._channel, payload)
        for quota_id, org in quotas.items():
            if not self._wanted(org):
                continue
            try:
                rows = conn.execute(
                    _ALERTS_SQL + " where a.quota_id = %s and a.id > %s order by a.id",
                    (quota_id, self._seen_by_quota.get(quota_id, self._start_id)),
                ).fetchall()
            except Exception as exc:
                log.warning("alert listener could not read the alerts of quota %s: %s",
                            quota_id, exc)  # fmt: skip
                continue
            for row in rows:
                self._seen_by_quota[quota_id] = row["alert_id"]
                self._dispatch(QuotaAlert.model_validate(row))

    def _wanted(self, organization_id: str) -> bool:
        with self._lock:
            return any(org is None or org == organization_id for _, org, _ in self._callbacks)

    def _latest_id(self, conn: Any) -> int:
        """Where a catch-up after a reconnect starts: alerts older than the listener are
        not delivered."""
        try:
            row = conn.execute(
                "select coalesce(max(id), 0) as id from public.quota_alerts"
            ).fetchone()
        except Exception as exc:
            log.warning("alert listener cannot read quota_alerts (%s): no alert can be delivered",
                        exc)  # fmt: skip
            self._can_catch_up = False
            return 0
        return int(row["id"])

    def _catch_up(self, conn: Any) -> None:
        if not self._can_catch_up:
            return
        try:
            rows = conn.execute(
                _ALERTS_SQL + " where a.id > %s order by a.id", (self._last_id,)
            ).fetchall()
        except Exception as exc:
            log.warning("alert listener could not read missed alerts: %s", exc)
            return
        for row in rows:
            self._dispatch(QuotaAlert.model_validate(row))

    def _dispatch(self, alert: QuotaAlert) -> None:
        if alert.alert_id in self._seen_set:
            return
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(alert.alert_id)
        self._seen_set.add(alert.alert_id)
        self._last_id = max(self._last_id, alert.alert_id)
        with self._lock:
            callbacks = list(self._callbacks)
        for callback, org, loop in callbacks:
            if org is not None and org != alert.organization_id:
                continue
            try:
                outcome = callback(alert)
                if asyncio.iscoroutine(outcome):
                    if loop is not None and loop.is_running():
                        asyncio.run_coroutine_threadsafe(outcome, loop)
                    else:
                        asyncio.run(outcome)
            except Exception:
                log.exception("on_alert callback %r failed", callback)


# ---------------------------------------------------------------------------------------
# The trackers' methods
# ---------------------------------------------------------------------------------------

_listener_lock = threading.Lock()


def _database_url(backend: Any) -> str:
    pg = _postgres(backend)
    url = getattr(pg, "database_url", None) or getattr(pg, "_url", None)
    if not isinstance(url, str) or not url:
        raise ConfigurationError("the Postgres backend has no database URL to LISTEN on")
    return url


class AlertsMixin:
    """Quota-alert callbacks on a tracker (its ``backend`` must be a :class:`PostgresBackend`);
    the trackers' data methods (``get_records``, ``export``, ...) wrap the functions above."""

    backend: Backend
    _alert_listener: AlertListener | None = None

    def on_alert(
        self, callback: AlertCallback, *, organization_id: str | None = None
    ) -> AlertCallback:
        """Registers a callback for quota alerts (usable as a decorator); the first call
        starts an :class:`AlertListener` on a dedicated connection."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with _listener_lock:
            listener = self._alert_listener
            if listener is None:
                listener = AlertListener(_database_url(self.backend))
                self._alert_listener = listener
                weakref.finalize(self, listener.stop, 1.0)
        listener.add(callback, organization_id=organization_id, loop=loop)
        listener.start()
        return callback

    def stop_alerts(self) -> None:
        """Stops the alert listener, if one was started."""
        with _listener_lock:
            listener, self._alert_listener = self._alert_listener, None
        if listener is not None:
            listener.stop()
