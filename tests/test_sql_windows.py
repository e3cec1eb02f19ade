"""Quota windows: calendar-aligned in the quota's time zone (DST-correct), lazy rollover.

``private.window_bounds(quota_type, time_zone, at, anchor)`` returns ``[window_start,
reset_at)``. Expected instants are written in UTC by hand from the tz database: São Paulo had
DST until 2019 (clocks forward at 00:00 on 2018-11-04, so that midnight does not exist; back
at 00:00 on 2019-02-17); Berlin switches at 01:00 UTC on 2026-03-29 and 2026-10-25.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql as pg_sql
from psycopg.rows import dict_row

D = Decimal
UTC = timezone.utc
Conn = psycopg.Connection[Any]


@pytest.fixture(scope="module")
def module_conn(qf_template: Any) -> Iterator[Conn]:
    """One clone of the session template shared by this module's cases that write nothing
    (a clone per case costs ~0.3 s); dropped at the end of the module."""
    name = f"{qf_template.dbname}_m{secrets.token_hex(3)}"
    server = {
        "host": qf_template.host,
        "port": qf_template.port,
        "user": qf_template.user,
        "password": qf_template.password,
    }
    ident = pg_sql.Identifier(name)
    with psycopg.connect(**server, dbname="postgres", autocommit=True) as admin:
        admin.execute(
            pg_sql.SQL("create database {} template {}").format(
                ident, pg_sql.Identifier(qf_template.template_dbname)
            )
        )
        try:
            with psycopg.connect(**server, dbname=name, autocommit=True) as connection:
                yield connection
        finally:
            admin.execute(pg_sql.SQL("drop database if exists {} with (force)").format(ident))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def bounds(conn: Conn, quota_type: str, tz: str, at: datetime, anchor: Any = None) -> Any:
    row = conn.execute(
        "select window_start, reset_at from private.window_bounds(%s, %s, %s, %s)",
        (quota_type, tz, at, anchor),
    ).fetchone()
    assert row is not None
    return row


SAO = "America/Sao_Paulo"
BER = "Europe/Berlin"

CASES = [
    # (id, quota_type, tz, at (UTC), window_start (UTC), reset_at (UTC), hours long)
    # São Paulo, DST start: 2018-11-04 local midnight does not exist; the day starts at
    # 01:00 -02 (03:00 UTC) and lasts 23 hours.
    (
        "sao-day-before-dst",
        "daily",
        SAO,
        "2018-11-04 02:59:59",
        "2018-11-03 03:00",
        "2018-11-04 03:00",
        24,
    ),
    (
        "sao-dst-start-day",
        "daily",
        SAO,
        "2018-11-04 03:00",
        "2018-11-04 03:00",
        "2018-11-05 02:00",
        23,
    ),
    (
        "sao-dst-start-day-late",
        "daily",
        SAO,
        "2018-11-05 01:59:59",
        "2018-11-04 03:00",
        "2018-11-05 02:00",
        23,
    ),
    # São Paulo, DST end: 2019-02-16 lasts 25 hours (23:00-24:00 local happens twice).
    (
        "sao-dst-end-day-first-2330",
        "daily",
        SAO,
        "2019-02-17 01:30",
        "2019-02-16 02:00",
        "2019-02-17 03:00",
        25,
    ),
    (
        "sao-dst-end-day-second-2330",
        "daily",
        SAO,
        "2019-02-17 02:30",
        "2019-02-16 02:00",
        "2019-02-17 03:00",
        25,
    ),
    (
        "sao-after-dst-end",
        "daily",
        SAO,
        "2019-02-17 03:00",
        "2019-02-17 03:00",
        "2019-02-18 03:00",
        24,
    ),
    # Berlin: 23-hour and 25-hour days.
    (
        "berlin-spring-day",
        "daily",
        BER,
        "2026-03-29 12:00",
        "2026-03-28 23:00",
        "2026-03-29 22:00",
        23,
    ),
    (
        "berlin-autumn-day",
        "daily",
        BER,
        "2026-10-25 12:00",
        "2026-10-24 22:00",
        "2026-10-25 23:00",
        25,
    ),
    (
        "berlin-midnight-is-new-day",
        "daily",
        BER,
        "2026-10-25 23:00",
        "2026-10-25 23:00",
        "2026-10-26 23:00",
        24,
    ),
    # Hourly across Berlin's changes: every window is one real hour on a local hour.
    (
        "berlin-hour-before-spring",
        "hourly",
        BER,
        "2026-03-29 00:30",
        "2026-03-29 00:00",
        "2026-03-29 01:00",
        1,
    ),
    (
        "berlin-hour-after-spring",
        "hourly",
        BER,
        "2026-03-29 01:30",
        "2026-03-29 01:00",
        "2026-03-29 02:00",
        1,
    ),
    (
        "berlin-first-0230-autumn",
        "hourly",
        BER,
        "2026-10-25 00:30",
        "2026-10-25 00:00",
        "2026-10-25 01:00",
        1,
    ),
    (
        "berlin-second-0230-autumn",
        "hourly",
        BER,
        "2026-10-25 01:30",
        "2026-10-25 01:00",
        "2026-10-25 02:00",
        1,
    ),
    (
        "kolkata-half-hour-zone",
        "hourly",
        "Asia/Kolkata",
        "2026-11-22 10:15",
        "2026-11-22 09:30",
        "2026-11-22 10:30",
        1,
    ),
    # Weekly: Monday 00:00 local. 2026-11-22 is a Sunday; 2026-10-25 Berlin's 25-hour Sunday.
    (
        "weekly-sunday-is-end-of-week",
        "weekly",
        BER,
        "2026-11-22 12:00",
        "2026-11-15 23:00",
        "2026-11-22 23:00",
        168,
    ),
    (
        "weekly-monday-starts",
        "weekly",
        BER,
        "2026-11-22 23:00",
        "2026-11-22 23:00",
        "2026-11-29 23:00",
        168,
    ),
    (
        "weekly-across-dst-end",
        "weekly",
        BER,
        "2026-10-25 12:00",
        "2026-10-18 22:00",
        "2026-10-25 23:00",
        169,
    ),
    # Monthly at month ends, in local time.
    (
        "monthly-jan-31",
        "monthly",
        BER,
        "2026-01-31 22:59:59",
        "2025-12-31 23:00",
        "2026-01-31 23:00",
        31 * 24,
    ),
    (
        "monthly-feb-starts-jan-31-utc",
        "monthly",
        BER,
        "2026-01-31 23:00",
        "2026-01-31 23:00",
        "2026-02-28 23:00",
        28 * 24,
    ),
    (
        "monthly-leap-feb-29",
        "monthly",
        "UTC",
        "2028-02-29 23:59:59",
        "2028-02-01 00:00",
        "2028-03-01 00:00",
        29 * 24,
    ),
    (
        "monthly-sao-march",
        "monthly",
        SAO,
        "2026-03-01 02:59",
        "2026-02-01 03:00",
        "2026-03-01 03:00",
        28 * 24,
    ),
    (
        "daily-leap-day",
        "daily",
        "UTC",
        "2028-02-29 12:00",
        "2028-02-29 00:00",
        "2028-03-01 00:00",
        24,
    ),
    (
        "minute",
        "minute",
        BER,
        "2026-03-29 01:00:59.5",
        "2026-03-29 01:00",
        "2026-03-29 01:01",
        1 / 60,
    ),
]


@pytest.mark.parametrize(
    ("quota_type", "tz", "at", "start", "reset", "hours"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_window_bounds_are_calendar_aligned_in_the_time_zone(
    module_conn: Conn, quota_type: str, tz: str, at: str, start: str, reset: str, hours: float
) -> None:
    """The window containing `at` starts and ends on local boundaries, DST included."""
    got = bounds(module_conn, quota_type, tz, utc(at))
    assert got == (utc(start), utc(reset))
    assert (got[1] - got[0]) == timedelta(hours=hours)
    # Boundaries are local midnights / hours as the zone reads them (monthly/weekly/daily).
    if quota_type in ("daily", "weekly", "monthly"):
        for instant in got:
            local = instant.astimezone(ZoneInfo(tz))
            exists = (local.hour, local.minute) == (0, 0)
            # Only São Paulo's 2018-11-04 has no midnight: the day starts at 01:00.
            assert exists or (local.date().isoformat(), local.hour) == ("2018-11-04", 1)


def test_consecutive_daily_windows_tile_time_without_gaps(module_conn: Conn) -> None:
    """Around each DST change the next window starts exactly where the previous one ended."""
    for tz, first in [
        (SAO, "2018-11-02 12:00"),
        (SAO, "2019-02-15 12:00"),
        (BER, "2026-03-27 12:00"),
        (BER, "2026-10-23 12:00"),
    ]:
        _, reset = bounds(module_conn, "daily", tz, utc(first))
        for _ in range(4):
            nxt = bounds(module_conn, "daily", tz, reset)
            assert nxt[0] == reset
            reset = nxt[1]


def test_total_window_never_resets_and_starts_at_the_anchor(module_conn: Conn) -> None:
    """'total' spans from the quota's creation (anchor) and has no reset."""
    anchor = utc("2026-01-01 00:00")
    assert bounds(module_conn, "total", BER, utc("2026-11-22 12:00"), anchor) == (anchor, None)


def test_unknown_window_is_an_error(module_conn: Conn) -> None:
    """A window type that does not exist raises 22023."""
    with pytest.raises(psycopg.Error) as exc:
        bounds(module_conn, "fortnightly", BER, utc("2026-11-22 12:00"))
    assert exc.value.sqlstate == "22023"


# ---------------------------------------------------------------- rollover


def _org_quota(conn: Conn, tz: str, **kw: Any) -> tuple[Any, Any]:
    org = conn.execute(
        "insert into public.organizations (name, time_zone) values ('W', %s) returning id", (tz,)
    ).fetchone()
    assert org is not None
    cols = {"organization_id": org[0], "quota_type": "daily", "quota_limit": D(1), **kw}
    q = conn.execute(
        f"insert into public.usage_quotas ({', '.join(cols)})"
        f" values ({', '.join(f'%({k})s' for k in cols)}) returning id",
        cols,
    ).fetchone()
    assert q is not None
    return org[0], q[0]


def _local_day(tz: str, days_ago: int = 0) -> tuple[datetime, datetime]:
    """[start, end) of today's (or an earlier) local calendar day in tz, as aware datetimes."""
    zone = ZoneInfo(tz)
    today = datetime.now(zone).date() - timedelta(days=days_ago)
    start = datetime(today.year, today.month, today.day, tzinfo=zone)
    nxt = today + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def _age_window(
    conn: Conn, qid: Any, days: int, usage: str, reserved: str = "0"
) -> tuple[datetime, datetime]:
    """Pretend the quota's window is `days` local days old with this usage and hold."""
    start, end = _local_day(str(_tz(conn, qid)), days)
    conn.execute(
        "update public.usage_quotas set window_start = %s, reset_at = %s, current_usage = %s,"
        " reserved = %s where id = %s",
        (start, end, D(usage), D(reserved), qid),
    )
    row = conn.execute(
        "select window_start, reset_at from public.usage_quotas where id = %s", (qid,)
    ).fetchone()
    assert row == (start, end), "the window trigger must keep a window it did not change"
    return start, end


def _tz(conn: Conn, qid: Any) -> str:
    row = conn.execute("select time_zone from public.usage_quotas where id = %s", (qid,)).fetchone()
    assert row is not None
    return str(row[0])


def _quota(conn: Conn, qid: Any) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute("select * from public.usage_quotas where id = %s", (qid,))
        .fetchone()
    )
    assert row is not None
    return row


@pytest.mark.parametrize("tz", [SAO, BER])
def test_passed_window_rolls_over_under_reserve_quota(conn: Conn, tz: str) -> None:
    """The first reserve after local midnight closes yesterday into quota_periods (old usage
    and bounds), restarts usage at 0 with the pending hold carried over, and sets reset_at to
    the next local midnight."""
    org, qid = _org_quota(conn, tz)
    old_start, old_end = _age_window(conn, qid, 1, usage="0.95", reserved="0.04")
    # Yesterday's 0.95 + 0.04 would refuse 0.10; today's window admits it.
    conn.execute(
        "select * from public.reserve_quota(%s, 'after-midnight', 'openai', 'gpt-4o', 0.10)", (org,)
    )
    q = _quota(conn, qid)
    today_start, today_end = _local_day(tz)
    assert (q["current_usage"], q["reserved"]) == (0, D("0.14"))
    assert (q["window_start"], q["reset_at"]) == (today_start, today_end)
    periods = conn.execute(
        "select quota_id, quota_type, metric, quota_limit, usage, window_start, window_end"
        " from public.quota_periods"
    ).fetchall()
    assert periods == [(qid, "daily", "usd", D(1), D("0.95"), old_start, old_end)]


def test_passed_window_rolls_over_under_record_usage_and_skipped_days_close_once(
    conn: Conn,
) -> None:
    """A settle three days after the last window closes that window once (no empty rows for
    skipped days) and charges today's window."""
    org, qid = _org_quota(conn, BER, metric="tokens", quota_limit=D(10_000))
    old_start, old_end = _age_window(conn, qid, 3, usage="1234")
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => 'late-day',"
        " provider => 'openai', model => 'gpt-4o', input_tokens => 100, output_tokens => 10)",
        (org,),
    )
    q = _quota(conn, qid)
    assert (q["current_usage"], q["reserved"]) == (110, 0)
    assert (q["window_start"], q["reset_at"]) == _local_day(BER)
    periods = conn.execute(
        "select usage, window_start, window_end from public.quota_periods where quota_id = %s",
        (qid,),
    ).fetchall()
    assert periods == [(D(1234), old_start, old_end)]
    # The next call in the same window does not roll again.
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => 'same-day',"
        " provider => 'openai', model => 'gpt-4o', input_tokens => 10, output_tokens => 0)",
        (org,),
    )
    assert _quota(conn, qid)["current_usage"] == 120
    assert conn.execute("select count(*) from public.quota_periods").fetchone() == (1,)


def test_status_shows_the_new_window_before_any_write(conn: Conn) -> None:
    """get_quota_status and check_quota read a passed window as already rolled over."""
    org, qid = _org_quota(conn, SAO)
    _age_window(conn, qid, 1, usage="0.99")
    status = (
        conn.cursor(row_factory=dict_row)
        .execute("select * from public.get_quota_status(%s)", (org,))
        .fetchone()
    )
    assert status is not None
    assert (status["current_usage"], status["remaining"]) == (0, D(1))
    assert (status["window_start"], status["reset_at"]) == _local_day(SAO)
    row = conn.execute(
        "select allowed, current_usage from public.check_quota(%s, 'openai', 'gpt-4', 0.5)",
        (org,),
    ).fetchone()
    assert row == (True, 0)
    assert conn.execute("select count(*) from public.quota_periods").fetchone() == (0,)


def test_total_quota_never_rolls_over(conn: Conn) -> None:
    """A 'total' quota keeps accumulating: no reset_at, no history rows."""
    org, qid = _org_quota(conn, BER, quota_type="total")
    for i in range(2):
        conn.execute(
            "select * from public.record_usage(organization_id => %s, request_id => %s,"
            " provider => 'openai', model => 'gpt-4o', input_tokens => 100000)",
            (org, f"t{i}"),
        )
    q = _quota(conn, qid)
    assert (q["current_usage"], q["reset_at"]) == (D("0.5"), None)
    assert q["window_start"] == q["created_at"]
    assert conn.execute("select count(*) from public.quota_periods").fetchone() == (0,)


def test_changing_a_quota_window_type_recomputes_its_window(conn: Conn) -> None:
    """Switching daily → monthly (or the time zone) gives the calendar window of the new type."""
    _, qid = _org_quota(conn, BER)
    conn.execute(
        "update public.usage_quotas set quota_type = 'monthly', time_zone = 'UTC' where id = %s",
        (qid,),
    )
    q = _quota(conn, qid)
    now = datetime.now(UTC)
    month_start = datetime(now.year, now.month, 1, tzinfo=UTC)
    assert q["window_start"] == month_start
    assert q["reset_at"] == (month_start + timedelta(days=32)).replace(day=1)
