"""Usage reports over ``api_usage_logs``, one organization at a time (seed 003's analytics).

Six reports, each plain SQL returning a pydantic model (money as ``Decimal``):

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

``db`` is a psycopg connection, a :class:`~quotaflow.backends.PostgresBackend` or a URL. The
queries filter on ``organization_id`` themselves: run them for an organization the caller has
been authorized for (the HTTP functions do; RLS does the same for ``authenticated``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._db import Db, db_cursor
from .errors import ValidationError
from .models import QuotaStatus

__all__ = [
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
MAX_TREND_DAYS = 366
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
    successful: int
    failed: int
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
    average_cost_usd: Decimal | None
    average_latency_ms: Decimal | None
    unique_users: int
    first_at: datetime | None
    last_at: datetime | None


class Group(_Model):
    """One row of a breakdown; the key fields that do not apply are None."""

    provider: str | None = None
    model: str | None = None
    user_id: str | None = None
    requests: int
    failed: int
    total_tokens: int
    cost_usd: Decimal
    credits: Decimal


class DailyPoint(_Model):
    """One local day."""

    date: date
    requests: int
    failed: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: Decimal
    credits: Decimal
    unique_users: int


class ModelPerformance(_Model):
    """How one model behaved in the period."""

    provider: str
    model: str
    requests: int
    successful: int
    failed: int
    success_rate: Decimal
    average_latency_ms: Decimal | None
    p50_latency_ms: Decimal | None
    p95_latency_ms: Decimal | None
    average_input_tokens: Decimal
    average_output_tokens: Decimal
    total_tokens: int
    cost_usd: Decimal
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
# SQL
# ---------------------------------------------------------------------------------------

_WHERE = """l.organization_id = %(org)s
  and (%(lo)s::timestamptz is null or l.occurred_at >= %(lo)s::timestamptz)
  and (%(hi)s::timestamptz is null or l.occurred_at < %(hi)s::timestamptz)
  and (%(user_id)s::text is null or l.user_id = %(user_id)s::text)"""

_PERIOD_SQL = """
select o.name, o.time_zone,
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

_TOTALS_SQL = f"""
select count(*)::bigint as requests,
       (count(*) filter (where l.success))::bigint as successful,
       (count(*) filter (where not l.success))::bigint as failed,
       round((count(*) filter (where l.success))::numeric / nullif(count(*), 0), 4) as success_rate,
       coalesce(sum(l.input_tokens), 0)::bigint as input_tokens,
       coalesce(sum(l.output_tokens), 0)::bigint as output_tokens,
       coalesce(sum(l.cached_input_tokens), 0)::bigint as cached_input_tokens,
       coalesce(sum(l.cache_write_tokens), 0)::bigint as cache_write_tokens,
       coalesce(sum(l.reasoning_tokens), 0)::bigint as reasoning_tokens,
       coalesce(sum(l.total_tokens), 0)::bigint as total_tokens,
       coalesce(sum(l.cost_usd), 0) as cost_usd,
       coalesce(sum(l.credits), 0) as credits,
       trim_scale(round(avg(l.cost_usd), 8)) as average_cost_usd,
       round(avg(l.latency_ms), 1) as average_latency_ms,
       count(distinct l.user_id)::bigint as unique_users,
       min(l.occurred_at) as first_at,
       max(l.occurred_at) as last_at
from public.api_usage_logs l
where {_WHERE}
"""

_GROUP_SQL = """
select {keys}, count(*)::bigint as requests,
       (count(*) filter (where not l.success))::bigint as failed,
       coalesce(sum(l.total_tokens), 0)::bigint as total_tokens,
       coalesce(sum(l.cost_usd), 0) as cost_usd,
       coalesce(sum(l.credits), 0) as credits
from public.api_usage_logs l
where {where}
group by {keys}
order by cost_usd desc, requests desc, {keys}
limit {limit}
"""

_DAILY_SQL = f"""
with days as (
  select d::date as day
  from generate_series(%(first_day)s::date, %(last_day)s::date, interval '1 day') d
), agg as (
  select (l.occurred_at at time zone %(tz)s)::date as day,
         count(*)::bigint as requests,
         (count(*) filter (where not l.success))::bigint as failed,
         sum(l.input_tokens)::bigint as input_tokens,
         sum(l.output_tokens)::bigint as output_tokens,
         sum(l.total_tokens)::bigint as total_tokens,
         sum(l.cost_usd) as cost_usd,
         sum(l.credits) as credits,
         count(distinct l.user_id)::bigint as unique_users
  from public.api_usage_logs l
  where {_WHERE}
  group by 1
)
select days.day as date,
       coalesce(agg.requests, 0) as requests, coalesce(agg.failed, 0) as failed,
       coalesce(agg.input_tokens, 0) as input_tokens,
       coalesce(agg.output_tokens, 0) as output_tokens,
       coalesce(agg.total_tokens, 0) as total_tokens, coalesce(agg.cost_usd, 0) as cost_usd,
       coalesce(agg.credits, 0) as credits, coalesce(agg.unique_users, 0) as unique_users
from days left join agg on agg.day = days.day
order by days.day
"""

_ACTIVE_DAYS_SQL = f"""
select min((l.occurred_at at time zone %(tz)s)::date) as first_day,
       max((l.occurred_at at time zone %(tz)s)::date) as last_day
from public.api_usage_logs l
where {_WHERE}
"""

_QUOTAS_SQL = "select * from public.get_quota_status(%(org)s)"

_RECENT_SQL = """
select l.request_id, l.occurred_at, l.user_id, l.provider, l.model, l.input_tokens,
       l.output_tokens, l.total_tokens, l.cost_usd, l.success, l.error_code, l.error_message,
       l.latency_ms
from public.api_usage_logs l
where l.organization_id = %(org)s
order by l.occurred_at desc, l.id desc
limit %(limit)s
"""

_PERFORMANCE_SQL = f"""
select l.provider, l.model,
       count(*)::bigint as requests,
       (count(*) filter (where l.success))::bigint as successful,
       (count(*) filter (where not l.success))::bigint as failed,
       round((count(*) filter (where l.success))::numeric / count(*), 4) as success_rate,
       round(avg(l.latency_ms), 1) as average_latency_ms,
       round((percentile_cont(0.5) within group (order by l.latency_ms))::numeric, 1)
         as p50_latency_ms,
       round((percentile_cont(0.95) within group (order by l.latency_ms))::numeric, 1)
         as p95_latency_ms,
       round(avg(l.input_tokens), 1) as average_input_tokens,
       round(avg(l.output_tokens), 1) as average_output_tokens,
       coalesce(sum(l.total_tokens), 0)::bigint as total_tokens,
       coalesce(sum(l.cost_usd), 0) as cost_usd,
       case when sum(l.total_tokens) > 0
            then trim_scale(round(sum(l.cost_usd) * 1000 / sum(l.total_tokens), 8)) end
         as cost_per_1k_tokens
from public.api_usage_logs l
where {_WHERE}
group by l.provider, l.model
order by requests desc, cost_usd desc, l.provider, l.model
limit {MAX_GROUPS}
"""


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


class _Scope:
    """An organization, a period and optionally one user, resolved against the database."""

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
        if row["lo"] is not None and row["hi"] is not None and row["lo"] >= row["hi"]:
            raise ValidationError("the period is empty: start must be before end", field="end_date")
        self.cur = cur
        self.organization_id = organization_id
        self.name: str = row["name"]
        self.time_zone: str = row["time_zone"]
        self.today: date = row["today"]
        self.period = Period(start=row["lo"], end=row["hi"], time_zone=self.time_zone)
        self.params = {"org": organization_id, "lo": row["lo"], "hi": row["hi"], "user_id": user_id}

    def totals(self) -> Totals:
        return Totals.model_validate(self.cur.execute(_TOTALS_SQL, self.params).fetchone())

    def groups(self, *keys: str) -> list[Group]:
        sql = _GROUP_SQL.format(
            keys=", ".join(f"l.{k}" for k in keys), where=_WHERE, limit=MAX_GROUPS
        )
        return [Group.model_validate(r) for r in self.cur.execute(sql, self.params).fetchall()]

    def daily(
        self, first_day: date | None = None, last_day: date | None = None
    ) -> list[DailyPoint]:
        """Every local day from first to last; by default the days of the period that had
        calls (none for a period without calls)."""
        if first_day is None or last_day is None:
            row = self.cur.execute(
                _ACTIVE_DAYS_SQL, {**self.params, "tz": self.time_zone}
            ).fetchone()
            if row is None or row["first_day"] is None:
                return []
            first_day = first_day or row["first_day"]
            last_day = last_day or row["last_day"]
        rows = self.cur.execute(
            _DAILY_SQL,
            {**self.params, "tz": self.time_zone, "first_day": first_day, "last_day": last_day},
        ).fetchall()
        return [DailyPoint.model_validate(r) for r in rows]


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
) -> OverviewReport:
    """Totals of the period with breakdowns per provider, per model and per local day."""
    with db_cursor(db) as cur:
        scope = _Scope(cur, organization_id, start, end, user_id)
        return OverviewReport(
            organization_id=organization_id,
            period=scope.period,
            user_id=user_id,
            totals=scope.totals(),
            by_provider=scope.groups("provider"),
            by_model=scope.groups("provider", "model"),
            daily=scope.daily(),
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
    with db_cursor(db) as cur:
        scope = _Scope(cur, organization_id, start, end, user_id)
        return UserReport(
            organization_id=organization_id,
            user_id=user_id,
            period=scope.period,
            totals=scope.totals(),
            by_model=scope.groups("provider", "model"),
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
    with db_cursor(db) as cur:
        scope = _Scope(cur, organization_id, start, end)
        return OrganizationReport(
            organization_id=organization_id,
            name=scope.name,
            period=scope.period,
            totals=scope.totals(),
            by_user=scope.groups("user_id"),
            by_model=scope.groups("provider", "model"),
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
    with db_cursor(db) as cur:
        probe = _Scope(cur, organization_id, None, None)
        if start is not None:
            first = _as_date(start)
            last = first + timedelta(days=days - 1)
        else:
            last = _as_date(end) if end is not None else probe.today
            first = last - timedelta(days=days - 1)
        scope = _Scope(cur, organization_id, first, last, user_id)
        return TrendsReport(
            organization_id=organization_id,
            days=days,
            period=scope.period,
            points=scope.daily(first, last),
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
    with db_cursor(db) as cur:
        scope = _Scope(cur, organization_id, start, end, user_id)
        rows = cur.execute(_PERFORMANCE_SQL, scope.params).fetchall()
        return ModelPerformanceReport(
            organization_id=organization_id,
            period=scope.period,
            models=[ModelPerformance.model_validate(r) for r in rows],
        )


def _as_date(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


@contextmanager
def _snapshot(cur: Any) -> Iterator[None]:
    """One read-only repeatable-read transaction on an autocommit connection, so figures
    read by several statements agree with each other; a caller's open transaction is joined."""
    conn = cur.connection
    if not conn.autocommit:
        yield
        return
    with conn.transaction():
        cur.execute("set transaction isolation level repeatable read, read only")
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
    with db_cursor(db) as cur, _snapshot(cur):
        today = _Scope(cur, organization_id, None, None).today
        first = today - timedelta(days=days - 1)
        scope = _Scope(cur, organization_id, first, today)
        params = {"org": organization_id, "limit": recent}
        quotas = cur.execute(_QUOTAS_SQL, params).fetchall()
        calls = cur.execute(_RECENT_SQL, params).fetchall()
        now = cur.execute("select now() as now").fetchone()["now"]
        return DashboardReport(
            organization_id=organization_id,
            name=scope.name,
            time_zone=scope.time_zone,
            days=days,
            period=scope.period,
            totals=scope.totals(),
            daily=scope.daily(first, today),
            by_model=scope.groups("provider", "model"),
            by_user=scope.groups("user_id"),
            quotas=[
                QuotaStatus.model_validate({**q, "quota_id": str(q["quota_id"])}) for q in quotas
            ],
            recent_calls=[RecentCall.model_validate(c) for c in calls],
            generated_at=now,
        )
