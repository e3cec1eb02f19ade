"""Bad input: every refused call raises an SQL error with its own errcode and writes nothing.

Each case runs against an organization with a quota that already has usage and a pending
hold; before and after the failing statement we compare the usage-log rows, reservations,
quotas (usage, holds, windows) and history, which must not move. The cases share one
database (they must not write), so a case that wrongly writes fails itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pg_sql

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


UNKNOWN_ORG = "00000000-0000-4000-8000-000000000bad"

RECORD = (
    "select * from public.record_usage(organization_id => %(org)s, request_id => 'bad',"
    " provider => 'openai', model => {model}, input_tokens => {inp}, output_tokens => {out},"
    " cached_input_tokens => {cached}, reasoning_tokens => {reasoning}, latency_ms => {lat})"
)


def record_sql(
    model: str = "'gpt-4o'",
    inp: str = "100",
    out: str = "10",
    cached: str = "0",
    reasoning: str = "0",
    lat: str = "null",
    org: str = "%(org)s",
) -> str:
    sql = RECORD.format(model=model, inp=inp, out=out, cached=cached, reasoning=reasoning, lat=lat)
    return sql.replace("%(org)s", org, 1)


def reserve_sql(
    cost: str = "0.01",
    model: str = "'gpt-4o'",
    extra: str = "",
    org: str = "%(org)s",
    rid: str = "'bad'",
) -> str:
    return f"select * from public.reserve_quota({org}, {rid}, 'openai', {model}, {cost}{extra})"


CASES: list[tuple[str, str, str]] = [
    # (id, statement, expected sqlstate)
    ("reserve-negative-cost", reserve_sql(cost="-0.01"), "22023"),
    ("reserve-negative-input-tokens", reserve_sql(cost="null", extra=", -1, 10"), "22023"),
    ("reserve-negative-max-output", reserve_sql(cost="null", extra=", 10, -1"), "22023"),
    ("reserve-zero-ttl", reserve_sql(extra=", ttl_seconds => 0"), "22023"),
    ("reserve-empty-request-id", reserve_sql(rid="''"), "22023"),
    (
        "reserve-unknown-model",
        reserve_sql(cost="null", model="'gpt-9-ultra'", extra=", 10, 10"),
        "QF002",
    ),
    ("reserve-null-org", reserve_sql(org="null"), "22004"),
    ("reserve-unknown-org", reserve_sql(org=f"'{UNKNOWN_ORG}'"), "QF004"),
    ("record-negative-input", record_sql(inp="-5"), "22023"),
    ("record-negative-output", record_sql(out="-5"), "22023"),
    ("record-cached-exceeds-input", record_sql(inp="100", cached="101"), "22023"),
    ("record-reasoning-exceeds-output", record_sql(out="10", reasoning="11"), "22023"),
    ("record-negative-latency", record_sql(lat="-1"), "22023"),
    ("record-null-model", record_sql(model="null"), "22023"),
    ("record-null-org", record_sql(org="null"), "22004"),
    ("record-unknown-org", record_sql(org=f"'{UNKNOWN_ORG}'"), "QF004"),
    ("estimate-negative-tokens", "select public.estimate_cost('openai', 'gpt-4o', -1, 0)", "22023"),
    ("estimate-unknown-model", "select public.estimate_cost('openai', 'nope', 1, 1)", "QF002"),
    (
        "check-negative-cost",
        "select * from public.check_quota(%(org)s, 'openai', 'gpt-4o', -0.01)",
        "22023",
    ),
    ("check-null-org", "select * from public.check_quota(null, 'openai', 'gpt-4o', 0.01)", "22004"),
    ("status-null-org", "select * from public.get_quota_status(null)", "22004"),
    ("release-null-org", "select public.release_reservation(null, 'pending')", "22004"),
    (
        "quota-unknown-window",
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        " values (%(org)s, 'fortnightly', 1)",
        "22023",
    ),
    (
        "quota-invalid-time-zone",
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit, time_zone)"
        " values (%(org)s, 'daily', 1, 'Mars/Olympus_Mons')",
        "22023",
    ),
    (
        "quota-change-to-invalid-time-zone",
        "update public.usage_quotas set time_zone = 'Not/AZone' where organization_id = %(org)s",
        "22023",
    ),
    (
        "quota-negative-limit",
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        " values (%(org)s, 'daily', -1)",
        "23514",
    ),
    (
        "quota-null-org",
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        " values (null, 'daily', 1)",
        "22004",
    ),
    (
        "quota-unknown-org",
        f"insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        f" values ('{UNKNOWN_ORG}', 'daily', 1)",
        "QF004",
    ),
    (
        "org-invalid-time-zone",
        "insert into public.organizations (name, time_zone) values ('X', 'Europe/Atlantis')",
        "22023",
    ),
    (
        "window-unknown-type",
        "select * from private.window_bounds('fortnightly', 'UTC', now())",
        "22023",
    ),
    (
        "window-invalid-time-zone",
        "select * from private.window_bounds('daily', 'Nowhere/Land', now())",
        "22023",
    ),
]


@pytest.fixture(scope="module")
def org(module_conn: Conn) -> Any:
    conn = module_conn
    row = conn.execute(
        "insert into public.organizations (name, time_zone) values ('Bad Input', 'Europe/Berlin')"
        " returning id"
    ).fetchone()
    assert row is not None
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        " values (%s, 'daily', 1)",
        (row[0],),
    )
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => 'ok',"
        " provider => 'openai', model => 'gpt-4o', input_tokens => 1000, output_tokens => 100)",
        (row[0],),
    )
    conn.execute(
        "select * from public.reserve_quota(%s, 'pending', 'openai', 'gpt-4o', 0.10)", (row[0],)
    )
    return row[0]


def snapshot(conn: Conn) -> tuple[Any, ...]:
    """Everything a failed call could have written."""
    row = conn.execute(
        "select (select count(*) from public.organizations),"
        " (select count(*) from public.api_usage_logs),"
        " (select coalesce(sum(cost_usd), 0) from public.api_usage_logs),"
        " (select count(*) from public.quota_reservations),"
        " (select string_agg(request_id || ':' || status, ',' order by request_id)"
        "    from public.quota_reservations),"
        " (select string_agg(concat_ws(':', quota_type, time_zone, quota_limit, current_usage,"
        "    reserved, window_start, reset_at), ',') from public.usage_quotas),"
        " (select count(*) from public.quota_periods)"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(("sql", "sqlstate"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_its_errcode_and_writes_nothing(
    module_conn: Conn, org: Any, sql: str, sqlstate: str
) -> None:
    """The call is refused with the expected SQLSTATE; logs, holds and quotas are unchanged."""
    conn = module_conn  # shared by the cases: each must leave it as it found it
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(sql, {"org": org})
    assert exc.value.sqlstate == sqlstate, exc.value.diag.message_primary
    assert exc.value.diag.message_primary  # a sentence saying what was wrong
    assert snapshot(conn) == before
