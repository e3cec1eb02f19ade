"""Usage reports over ``api_usage_logs``, one organization at a time (seed 003's analytics).

Six reports, each a pydantic model (money as ``Decimal``) built from the SQL report functions
of the reports migration (``usage_summary``, ``usage_by_day``, ``usage_by_dimension``,
``model_performance``), so a figure here is the figure those functions (and ``sql/queries/``)
give; costs come in USD and, as ``cost_display``, in the organization's display currency:

* :func:`overview` — totals, per provider, per model and per day;
* :func:`user_report` — the same for one app user (``api_usage_logs.user_id``);
* :func:`organization_report` — totals, per user and per model;
* :func:`trends` — one point per local day, days without calls included;
* :func:`model_performance` — per model: success rate, latency (mean, p50, p95), tokens, cost;
* :func:`dashboard` — what the usage dashboard shows: the last N local days, spend per day, per
  model and per user, every quota and the most recent calls, read in one snapshot.

Periods: ``start``/``end`` may be dates or datetimes. Dates are whole days in the
organization's time zone, ``end`` included; datetimes are instants (without an offset, UTC),
``end`` excluded. Days are always the organization's local days, computed in the database.

``db`` is a psycopg connection, a :class:`~quotaflow.backends.PostgresBackend` or a URL. Run
the reports as the service (the HTTP functions do, for an organization the caller has been
authorized for); as ``authenticated`` the SQL functions refuse non-members (42501).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from .._db import Db, db_cursor
from ..errors import ValidationError
from ..models import QuotaStatus

__all__ = [
    "DEFAULT_REPORT_DAYS",
    "MAX_BULK_REPORT_DAYS",
    "MAX_REPORT_DAYS",
    "DailyPoint",
    "DashboardReport",
    "Group",
    "ModelPerformance",
    "ModelPerformanceReport",
    "OrganizationReport",
    "OverviewReport",
    "Period",
    "RecentCall",
    "Totals",
    "TrendsReport",
    "UserReport",
    "dashboard",
    "model_performance",
    "organization_report",
    "overview",
    "trends",
    "user_report",
]

MAX_GROUPS = 100
"""Rows per breakdown (by model, by user, ...), largest cost first."""
MAX_REPORT_DAYS = 400
"""The longest period one report covers over HTTP (and through the SQL functions for the API
roles): past it, 400 naming the limit."""
MAX_TREND_DAYS = MAX_REPORT_DAYS
DEFAULT_REPORT_DAYS = 30
"""A report over HTTP without dates covers the last 30 days."""
MAX_BULK_REPORT_DAYS = 2000
"""The periods of one bulk usage_stats request together (20 reports of 100 days, 5 of 400)."""
REPORT_STATEMENT_TIMEOUT = "15s"
"""statement_timeout of every report query run in its own transaction (a report that needs
longer is cancelled: 503)."""
DASHBOARD_DAYS = 30
"""Local days the dashboard covers, today included."""
DASHBOARD_RECENT_CALLS = 20


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Period(_Model):
    """The instants a report covers; None = unbounded."""

    start: datetime | None
    end: datetime | None
    """Exclusive."""
    time_zone: str
    """The organization's time zone: local days are counted in it."""


class Totals(_Model):
    """Sums over the calls in a period."""

    requests: int
    successful_requests: int
    failed_requests: int
    success_rate: Decimal | None
    """successful / requests, 4 decimals; None without calls."""
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: Decimal
    credits: Decimal
    display_currency: str
    """The organization's display currency (USD without one)."""
    cost_display: Decimal | None
    """cost_usd in the display currency at the rates in force; None when a rate is missing."""
    avg_cost_usd: Decimal | None
    avg_latency_ms: Decimal | None
    unique_users: int
    first_at: datetime | None
    last_at: datetime | None
    unpriced_requests: int = 0
    """Calls of a model without a price: their tokens are counted, their cost is not (yet:
    ``quotaflow pricing reprice``)."""


class Group(_Model):
    """One row of a breakdown; the key fields that do not apply are None."""

    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    requests: int
    failed_requests: int
    total_tokens: int
    cost_usd: Decimal
    credits: Decimal
    cost_display: Decimal | None


class DailyPoint(_Model):
    """One local day."""

    date: date
    requests: int
    failed_requests: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: Decimal
    credits: Decimal
    cost_display: Decimal | None


class ModelPerformance(_Model):
    """How one model behaved in the period."""

    provider: str
    model: str
    requests: int
    successful_requests: int
    failed_requests: int
    success_rate: Decimal
    avg_latency_ms: Decimal | None
    p50_latency_ms: Decimal | None
    p95_latency_ms: Decimal | None
    avg_input_tokens: Decimal
    avg_output_tokens: Decimal
    total_tokens: int
    cost_usd: Decimal
    cost_display: Decimal | None
    avg_cost_usd: Decimal
    cost_per_1k_tokens: Decimal | None


class OverviewReport(_Model):
    organization_id: str
    period: Period
    user_id: str | None = None
    totals: Totals
    by_provider: list[Group]
    by_model: list[Group]
    daily: list[DailyPoint]


class UserReport(_Model):
    organization_id: str
    user_id: str
    period: Period
    totals: Totals
    by_model: list[Group]
    daily: list[DailyPoint]


class OrganizationReport(_Model):
    organization_id: str
    name: str
    period: Period
    totals: Totals
    by_user: list[Group]
    by_model: list[Group]


class TrendsReport(_Model):
    organization_id: str
    days: int
    period: Period
    points: list[DailyPoint]


class ModelPerformanceReport(_Model):
    organization_id: str
    period: Period
    models: list[ModelPerformance]


class RecentCall(_Model):
    """One logged call, as the dashboard lists it."""

    request_id: str
    occurred_at: datetime
    user_id: str | None
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: Decimal
    unpriced: bool = False
    """The model had no price: cost_usd is 0 until the call is repriced."""
    success: bool
    error_code: str | None
    error_message: str | None
    latency_ms: int | None


class DashboardReport(_Model):
    """Everything the usage dashboard draws, for one organization."""

    organization_id: str
    name: str
    time_zone: str
    days: int
    period: Period
    """The last ``days`` local days, today included."""
    totals: Totals
    daily: list[DailyPoint]
    """One point per local day of the period, days without calls included."""
    by_model: list[Group]
    by_user: list[Group]
    """Calls without a user_id form one group with ``user_id`` None."""
    quotas: list[QuotaStatus]
    """Every quota as ``get_quota_status`` reports it (usage in the current window)."""
    recent_calls: list[RecentCall]
    """The most recent calls, newest first, whatever the period."""
    generated_at: datetime


# ---------------------------------------------------------------------------------------
# SQL: the figures come from the report functions of the reports migration
# ---------------------------------------------------------------------------------------

_PERIOD_SQL = """
select o.name, o.time_zone, now() as now,
       case when %(start_day)s::date is not null
            then %(start_day)s::date::timestamp at time zone o.time_zone
            else %(start_at)s::timestamptz end as lo,
       case when %(end_day)s::date is not null
            then (%(end_day)s::date + 1)::timestamp at time zone o.time_zone
            else %(end_at)s::timestamptz end as hi,
       (now() at time zone o.time_zone)::date as today
from public.organizations o
where o.id = %(org)s
"""

_SPAN_SQL = """
select min(l.occurred_at) as first_at, max(l.occurred_at) as last_at
from public.api_usage_logs l
where l.organization_id = %(org)s
  and l.occurred_at >= coalesce(%(lo)s::timestamptz, '-infinity')
  and l.occurred_at < coalesce(%(hi)s::timestamptz, 'infinity')
  and (%(user_id)s::text is null or l.user_id = %(user_id)s::text)
"""

_SUMMARY_SQL = "select * from public.usage_summary(%(org)s, %(lo)s, %(hi)s, %(user_id)s)"

_UNPRICED_SQL = """
select count(*) as n
from public.api_usage_logs l
where l.organization_id = %(org)s and l.unpriced
  and l.occurred_at >= %(lo)s::timestamptz and l.occurred_at < %(hi)s::timestamptz
  and (%(user_id)s::text is null or l.user_id = %(user_id)s::text)
"""

_USERS_SQL = """
select count(d.key) as users
from public.usage_by_dimension(%(org)s, 'user', %(lo)s, %(hi)s, %(user_id)s) d
"""

_DIMENSION_SQL = f"""
select * from public.usage_by_dimension(%(org)s, %(dimension)s, %(lo)s, %(hi)s, %(user_id)s)
  with ordinality d
order by d.ordinality
limit {MAX_GROUPS}
"""

_BY_DAY_SQL = "select * from public.usage_by_day(%(org)s, %(lo)s, %(hi)s, null, %(user_id)s)"

_PERFORMANCE_SQL = "select * from public.model_performance(%(org)s, %(lo)s, %(hi)s, %(user_id)s)"

_QUOTAS_SQL = "select * from public.get_quota_status(%(org)s)"

_RECENT_SQL = """
select l.request_id, l.occurred_at, l.user_id, l.provider, l.model, l.input_tokens,
       l.output_tokens, l.total_tokens, l.cost_usd, l.unpriced, l.success, l.error_code,
       l.error_message, l.latency_ms
from public.api_usage_logs l
where l.organization_id = %(org)s
order by l.occurred_at desc, l.id desc
limit %(limit)s
"""

_TICK = timedelta(microseconds=1)


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


class _Scope:
    """An organization, a period and optionally one user, resolved against the database.

    The SQL reports need finite bounds: ``params`` span the period's first to last call (an
    empty range without calls), which selects the same calls as the period, unbounded or not.
    """

    def __init__(
        self,
        cur: Any,
        organization_id: str,
        start: date | datetime | None,
        end: date | datetime | None,
        user_id: str | None = None,
    ) -> None:
        row = cur.execute(
            _PERIOD_SQL,
            {
                "org": organization_id,
                "start_day": _day(start),
                "start_at": _instant(start),
                "end_day": _day(end),
                "end_at": _instant(end),
            },
        ).fetchone()
        if row is None:
            raise ValidationError(
                f"unknown organization {organization_id}", field="organization_id"
            )
        lo, hi = row["lo"], row["hi"]
        if lo is not None and hi is not None and lo >= hi:
            raise ValidationError("the period is empty: start must be before end", field="end_date")
        span = {"org": organization_id, "lo": lo, "hi": hi, "user_id": user_id}
        self.first_at, self.last_at = cur.execute(_SPAN_SQL, span).fetchone().values()
        self.cur = cur
        self.name: str = row["name"]
        self.time_zone: str = row["time_zone"]
        self.today: date = row["today"]
        self.now: datetime = row["now"]
        self.period = Period(start=lo, end=hi, time_zone=self.time_zone)
        if self.first_at is None:
            span["lo"] = span["hi"] = lo or hi or row["now"]
        else:
            span["lo"], span["hi"] = self.first_at, self.last_at + _TICK
        self.params = span

    def totals(self) -> Totals:
        s = self.cur.execute(_SUMMARY_SQL, self.params).fetchone()
        users = self.cur.execute(_USERS_SQL, self.params).fetchone()["users"]
        unpriced = self.cur.execute(_UNPRICED_SQL, self.params).fetchone()["n"]
        return Totals(
            requests=s["requests"],
            successful_requests=s["successful_requests"],
            failed_requests=s["failed_requests"],
            success_rate=_rate(s["successful_requests"], s["requests"]),
            input_tokens=s["input_tokens"],
            output_tokens=s["output_tokens"],
            cached_input_tokens=s["cached_input_tokens"],
            cache_write_tokens=s["cache_write_tokens"],
            reasoning_tokens=s["reasoning_tokens"],
            total_tokens=s["total_tokens"],
            cost_usd=s["cost_usd"],
            credits=s["credits"],
            display_currency=s["display_currency"],
            cost_display=s["cost_display"],
            avg_cost_usd=s["avg_cost_usd"],
            avg_latency_ms=s["avg_latency_ms"],
            unique_users=users,
            first_at=self.first_at,
            last_at=self.last_at,
            unpriced_requests=unpriced,
        )

    def groups(self, dimension: str) -> list[Group]:
        """Per ``user`` or ``provider``: usage_by_dimension's rows."""
        rows = self.cur.execute(_DIMENSION_SQL, {**self.params, "dimension": dimension})
        key = "user_id" if dimension == "user" else dimension
        return [_group(r, **{key: r["key"]}) for r in rows.fetchall()]

    def performance(self) -> list[dict[str, Any]]:
        return list(self.cur.execute(_PERFORMANCE_SQL, self.params).fetchall())

    def by_model(self) -> list[Group]:
        """Per provider and model (model_performance's rows), most expensive first."""
        rows = sorted(
            self.performance(),
            key=lambda r: (-r["cost_usd"], -r["requests"], r["provider"], r["model"]),
        )
        return [_group(r, provider=r["provider"], model=r["model"]) for r in rows[:MAX_GROUPS]]

    def daily(self, dense: bool = False) -> list[DailyPoint]:
        """Every local day of the period when ``dense``; else the days from the first call's
        to the last call's (none for a period without calls)."""
        if not dense and self.first_at is None:
            return []
        lo, hi = (self.period.start, self.period.end) if dense else (None, None)
        params = {**self.params, "lo": lo or self.params["lo"], "hi": hi or self.params["hi"]}
        return [
            DailyPoint(
                date=r["day"],
                requests=r["requests"],
                failed_requests=r["failed_requests"],
                input_tokens=r["input_tokens"],
                output_tokens=r["output_tokens"],
                total_tokens=r["total_tokens"],
                cost_usd=r["cost_usd"],
                credits=r["credits"],
                cost_display=r["cost_display"],
            )
            for r in self.cur.execute(_BY_DAY_SQL, params).fetchall()
        ]


def _group(row: dict[str, Any], **keys: str | None) -> Group:
    return Group(
        **keys,
        requests=row["requests"],
        failed_requests=row["failed_requests"],
        total_tokens=row["total_tokens"],
        cost_usd=row["cost_usd"],
        credits=row["credits"],
        cost_display=row["cost_display"],
    )


def _rate(part: int, whole: int) -> Decimal | None:
    """part / whole to 4 decimals, as SQL's round(); None for nothing."""
    return (Decimal(part) / whole).quantize(Decimal("0.0001"), ROUND_HALF_UP) if whole else None


def _day(value: date | datetime | None) -> date | None:
    return value if isinstance(value, date) and not isinstance(value, datetime) else None


def _instant(value: date | datetime | None) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def overview(
    db: Db,
    organization_id: str,
    *,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    user_id: str | None = None,
    every_day: bool = False,
) -> OverviewReport:
    """Totals of the period with breakdowns per provider, per model and per local day (the
    days from the first call to the last; with ``every_day``, every day of a bounded period)."""
    with db_cursor(db) as cur, _bounded(cur):
        scope = _Scope(cur, organization_id, start, end, user_id)
        dense = every_day and scope.period.start is not None and scope.period.end is not None
        return OverviewReport(
            organization_id=organization_id,
            period=scope.period,
            user_id=user_id,
            totals=scope.totals(),
            by_provider=scope.groups("provider"),
            by_model=scope.by_model(),
            daily=scope.daily(dense=dense),
        )


def user_report(
    db: Db,
    organization_id: str,
    user_id: str,
    *,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
) -> UserReport:
    """One app user's totals, models and days."""
    with db_cursor(db) as cur, _bounded(cur):
        scope = _Scope(cur, organization_id, start, end, user_id)
        return UserReport(
            organization_id=organization_id,
            user_id=user_id,
            period=scope.period,
            totals=scope.totals(),
            by_model=scope.by_model(),
            daily=scope.daily(),
        )


def organization_report(
    db: Db,
    organization_id: str,
    *,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
) -> OrganizationReport:
    """The organization's totals with breakdowns per app user and per model."""
    with db_cursor(db) as cur, _bounded(cur):
        scope = _Scope(cur, organization_id, start, end)
        return OrganizationReport(
            organization_id=organization_id,
            name=scope.name,
            period=scope.period,
            totals=scope.totals(),
            by_user=scope.groups("user"),
            by_model=scope.by_model(),
        )


def trends(
    db: Db,
    organization_id: str,
    *,
    days: int = 30,
    start: date | None = None,
    end: date | None = None,
    user_id: str | None = None,
) -> TrendsReport:
    """``days`` consecutive local days, zero-filled: from ``start`` on when given, else ending
    ``end`` (default today in the organization's time zone)."""
    if not 1 <= days <= MAX_TREND_DAYS:
        raise ValidationError(f"days must be between 1 and {MAX_TREND_DAYS}", field="days")
    with db_cursor(db) as cur, _bounded(cur):
        if start is not None:
            first = _as_date(start)
            last = first + timedelta(days=days - 1)
        else:
            last = _as_date(end) if end is not None else _today(cur, organization_id)
            first = last - timedelta(days=days - 1)
        scope = _Scope(cur, organization_id, first, last, user_id)
        return TrendsReport(
            organization_id=organization_id,
            days=days,
            period=scope.period,
            points=scope.daily(dense=True),
        )


def model_performance(
    db: Db,
    organization_id: str,
    *,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    user_id: str | None = None,
) -> ModelPerformanceReport:
    """Per provider and model: calls, success rate, latency percentiles, tokens and cost."""
    with db_cursor(db) as cur, _bounded(cur):
        scope = _Scope(cur, organization_id, start, end, user_id)
        return ModelPerformanceReport(
            organization_id=organization_id,
            period=scope.period,
            models=[
                ModelPerformance(
                    provider=r["provider"],
                    model=r["model"],
                    requests=r["requests"],
                    successful_requests=r["successful_requests"],
                    failed_requests=r["failed_requests"],
                    success_rate=1 - r["error_rate"],
                    avg_latency_ms=r["avg_latency_ms"],
                    p50_latency_ms=r["p50_latency_ms"],
                    p95_latency_ms=r["p95_latency_ms"],
                    avg_input_tokens=r["avg_input_tokens"],
                    avg_output_tokens=r["avg_output_tokens"],
                    total_tokens=r["total_tokens"],
                    cost_usd=r["cost_usd"],
                    cost_display=r["cost_display"],
                    avg_cost_usd=r["avg_cost_usd"],
                    cost_per_1k_tokens=(r["cost_usd"] * 1000 / r["total_tokens"]).quantize(
                        Decimal("1e-8")
                    )
                    if r["total_tokens"]
                    else None,
                )
                for r in scope.performance()[:MAX_GROUPS]
            ],
        )


def _today(cur: Any, organization_id: str) -> date:
    return _Scope(cur, organization_id, None, None).today


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


@contextmanager
def _bounded(cur: Any, snapshot: bool = False) -> Iterator[None]:
    """On an autocommit connection: one read-only transaction whose statements are cancelled
    after :data:`REPORT_STATEMENT_TIMEOUT`, and with ``snapshot`` repeatable read, so figures
    read by several statements agree with each other. A caller's open transaction is joined
    as it is."""
    conn = cur.connection
    if not conn.autocommit:
        yield
        return
    isolation = "repeatable read" if snapshot else "read committed"
    with conn.transaction():
        cur.execute(f"set transaction isolation level {isolation}, read only")
        cur.execute("select set_config('statement_timeout', %s, true)",
                    (REPORT_STATEMENT_TIMEOUT,))  # fmt: skip
        yield


def dashboard(
    db: Db,
    organization_id: str,
    *,
    days: int = DASHBOARD_DAYS,
    recent: int = DASHBOARD_RECENT_CALLS,
) -> DashboardReport:
    """The usage dashboard's data: the last ``days`` local days (today included) with spend
    per day, per model and per user; every quota; the ``recent`` most recent calls."""
    if not 1 <= days <= MAX_TREND_DAYS:
        raise ValidationError(f"days must be between 1 and {MAX_TREND_DAYS}", field="days")
    if not 1 <= recent <= MAX_GROUPS:
        raise ValidationError(f"recent must be between 1 and {MAX_GROUPS}", field="recent")
    with db_cursor(db) as cur, _bounded(cur, snapshot=True):
        today = _today(cur, organization_id)
        first = today - timedelta(days=days - 1)
        scope = _Scope(cur, organization_id, first, today)
        params = {"org": organization_id, "limit": recent}
        quotas = cur.execute(_QUOTAS_SQL, params).fetchall()
        calls = cur.execute(_RECENT_SQL, params).fetchall()
        return DashboardReport(
            organization_id=organization_id,
            name=scope.name,
            time_zone=scope.time_zone,
            days=days,
            period=scope.period,
            totals=scope.totals(),
            daily=scope.daily(dense=True),
            by_model=scope.by_model(),
            by_user=scope.groups("user"),
            quotas=[
                QuotaStatus.model_validate({**q, "quota_id": str(q["quota_id"])}) for q in quotas
            ],
            recent_calls=[RecentCall.model_validate(c) for c in calls],
            generated_at=scope.now,
        )
