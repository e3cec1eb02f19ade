"""Report SQL functions: figures equal the hand-computed ones of ``tests/report_data.py``;
members see only their organization; the display currency follows the rate in force."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests import report_data as rd
from tests.db import act_as, new_auth_user

D = Decimal
Conn = psycopg.Connection[Any]


@pytest.fixture
def data(conn: Conn) -> Conn:
    rd.load(conn)
    return conn


def rows(conn: Conn, query: str, *params: Any) -> list[dict[str, Any]]:
    return list(conn.cursor(row_factory=dict_row).execute(query, params).fetchall())


def one(conn: Conn, query: str, *params: Any) -> dict[str, Any]:
    result = rows(conn, query, *params)
    assert len(result) == 1, result
    return result[0]


def test_usage_summary_totals_equal_the_hand_computed_figures(data: Conn) -> None:
    s = one(data, "select * from public.usage_summary(%s, %s, %s)", rd.ORG_A, rd.START, rd.END)
    assert s["period_start"] == rd.START and s["period_end"] == rd.END
    assert (s["requests"], s["successful_requests"], s["failed_requests"]) == (6, 5, 1)
    assert (s["input_tokens"], s["output_tokens"], s["total_tokens"]) == (9000, 2600, 11600)
    assert (s["cached_input_tokens"], s["cache_write_tokens"], s["reasoning_tokens"]) == (0, 0, 0)
    assert s["cost_usd"] == rd.TOTAL_COST
    assert s["credits"] == rd.TOTAL_CREDITS
    assert s["display_currency"] == "BRL"
    assert s["cost_display"] == rd.TOTAL_DISPLAY
    assert s["avg_cost_usd"] == pytest.approx(D("0.0188") / 6, abs=D("1e-18"))
    assert s["avg_latency_ms"] == D("516.7")


def test_usage_summary_ranges_are_half_open(data: Conn) -> None:
    """A call at exactly end_at is outside; one at exactly start_at is inside."""
    s = one(
        data,
        "select * from public.usage_summary(%s, '2026-01-09T23:59:59Z', '2026-01-13T00:00:00Z')",
        rd.ORG_A,
    )
    assert s["requests"] == 7
    assert s["cost_usd"] == rd.TOTAL_COST + D("0.00002")


def test_usage_summary_of_an_empty_range_is_one_row_of_zeros(data: Conn) -> None:
    s = one(data, "select * from public.usage_summary(%s, '2025-01-01', '2025-02-01')", rd.ORG_A)
    assert (s["requests"], s["total_tokens"], s["cost_usd"], s["credits"]) == (0, 0, 0, 0)
    assert s["avg_cost_usd"] is None and s["avg_latency_ms"] is None
    assert s["display_currency"] == "BRL"


def test_display_cost_is_usd_without_display_currency_and_null_without_a_rate(
    data: Conn,
) -> None:
    b = one(data, "select * from public.usage_summary(%s, %s, %s)", rd.ORG_B, rd.START, rd.END)
    assert (b["display_currency"], b["cost_usd"], b["cost_display"]) == (
        "USD",
        D("0.002"),
        D("0.002"),
    )

    data.execute(
        "update public.organizations set display_currency = 'EUR' where id = %s", (rd.ORG_B,)
    )
    b = one(data, "select * from public.usage_summary(%s, %s, %s)", rd.ORG_B, rd.START, rd.END)
    assert (b["display_currency"], b["cost_display"]) == ("EUR", None)
    # With no cost there is nothing to convert: 0 in any currency.
    empty = one(
        data, "select * from public.usage_summary(%s, '2025-01-01', '2025-01-02')", rd.ORG_B
    )
    assert empty["cost_display"] == 0

    # A rate from after the call does not apply to it.
    data.execute("insert into public.currency_rates values ('EUR', 0.9, '2026-01-11T13:00:00Z')")
    b = one(data, "select * from public.usage_summary(%s, %s, %s)", rd.ORG_B, rd.START, rd.END)
    assert b["cost_display"] is None
    data.execute("insert into public.currency_rates values ('EUR', 0.8, '2026-01-01T00:00:00Z')")
    b = one(data, "select * from public.usage_summary(%s, %s, %s)", rd.ORG_B, rd.START, rd.END)
    assert b["cost_display"] == D("0.0016")


def test_usage_by_day_uses_the_organizations_local_days_and_includes_empty_days(
    data: Conn,
) -> None:
    days = rows(data, "select * from public.usage_by_day(%s, %s, %s)", rd.ORG_A, rd.START, rd.END)
    assert [d["day"] for d in days] == [date(2026, 1, d) for d in (9, 10, 11, 12)]
    got = [(d["requests"], d["failed_requests"], d["cost_usd"], d["cost_display"]) for d in days]
    assert got == [
        (0, 0, 0, 0),
        (2, 0, D("0.0038"), D("0.019")),
        (2, 1, D("0.006"), D("0.03")),  # call 4 is 22:30 on the 11th in São Paulo
        (2, 0, D("0.009"), D("0.054")),
    ]
    assert [d["total_tokens"] for d in days] == [0, 3600, 2000, 6000]
    assert days[2]["avg_latency_ms"] == D("600.0")
    assert sum(d["credits"] for d in days) == rd.TOTAL_CREDITS


def test_usage_by_day_in_another_time_zone(data: Conn) -> None:
    days = rows(
        data, "select * from public.usage_by_day(%s, %s, %s, 'UTC')", rd.ORG_A, rd.START, rd.END
    )
    assert [(d["day"], d["requests"], d["cost_usd"]) for d in days] == [
        (date(2026, 1, 10), 2, D("0.0038")),
        (date(2026, 1, 11), 1, D("0.006")),
        (date(2026, 1, 12), 3, D("0.009")),
    ]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        data.execute(
            "select * from public.usage_by_day(%s, %s, %s, 'Mars/Base')",
            (rd.ORG_A, rd.START, rd.END),
        )


@pytest.mark.parametrize(
    ("dimension", "expected"),
    [
        ("user", [("u1", 3, 1, D("0.009")), ("u2", 2, 0, D("0.0088")), (None, 1, 0, D("0.001"))]),
        ("provider", [("openai", 5, 1, D("0.0128")), ("anthropic", 1, 0, D("0.006"))]),
        (
            "model",
            [("rpt-large", 3, 1, D("0.011")), ("rpt-haiku", 1, 0, D("0.006")),
             ("rpt-small", 2, 0, D("0.0018"))],
        ),
        (
            "conversation",
            [("c1", 3, 1, D("0.009")), ("c3", 1, 0, D("0.008")), (None, 1, 0, D("0.001")),
             ("c2", 1, 0, D("0.0008"))],
        ),
        # A call with two tags counts under each; untagged calls under null.
        ("tag", [(None, 3, 1, D("0.009")), ("chat", 2, 0, D("0.009")),
                 ("enem", 2, 0, D("0.0068"))]),
        ("session", [(None, 6, 1, D("0.0188"))]),
    ],
)  # fmt: skip
def test_usage_by_dimension(data: Conn, dimension: str, expected: list[tuple[Any, ...]]) -> None:
    got = rows(
        data,
        "select * from public.usage_by_dimension(%s, %s, %s, %s)",
        rd.ORG_A,
        dimension,
        rd.START,
        rd.END,
    )
    assert [(r["key"], r["requests"], r["failed_requests"], r["cost_usd"]) for r in got] == expected


def test_usage_by_dimension_columns_for_one_user(data: Conn) -> None:
    (u2,) = [
        r
        for r in rows(
            data,
            "select * from public.usage_by_dimension(%s, 'user', %s, %s)",
            rd.ORG_A,
            rd.START,
            rd.END,
        )
        if r["key"] == "u2"
    ]
    assert (u2["input_tokens"], u2["output_tokens"], u2["total_tokens"]) == (6000, 500, 6500)
    assert u2["credits"] == D("8.8")
    assert u2["cost_display"] == D("0.0008") * 5 + D("0.008") * 6
    assert u2["avg_cost_usd"] == D("0.0044")
    assert u2["avg_latency_ms"] == D("500.0")
    assert u2["last_used_at"].isoformat() == "2026-01-12T13:00:00+00:00"


def test_unknown_dimension_is_refused(data: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown report dimension"):
        data.execute("select * from public.usage_by_dimension(%s, 'planet')", (rd.ORG_A,))


def test_reports_of_one_user_count_only_that_users_calls(data: Conn) -> None:
    """user_id narrows usage_summary, usage_by_day, usage_by_dimension and model_performance
    to the figures of that user's row in the per-user report (u2: 2 calls, $0.0088)."""
    args = (rd.ORG_A, rd.START, rd.END)
    s = one(data, "select * from public.usage_summary(%s, %s, %s, 'u2')", *args)
    assert (s["requests"], s["total_tokens"], s["cost_usd"], s["credits"]) == (
        2,
        6500,
        D("0.0088"),
        D("8.8"),
    )
    assert s["cost_display"] == D("0.0008") * 5 + D("0.008") * 6
    days = rows(data, "select * from public.usage_by_day(%s, %s, %s, null, 'u2')", *args)
    assert (sum(d["requests"] for d in days), sum(d["cost_usd"] for d in days)) == (2, D("0.0088"))
    by_model = rows(
        data, "select * from public.usage_by_dimension(%s, 'model', %s, %s, 'u2')", *args
    )
    assert sum(r["cost_usd"] for r in by_model) == D("0.0088")
    perf = rows(data, "select * from public.model_performance(%s, %s, %s, 'u2')", *args)
    assert (sum(r["requests"] for r in perf), sum(r["credits"] for r in perf)) == (2, D("8.8"))
    assert (
        one(data, "select * from public.usage_summary(%s, %s, %s, 'nobody')", *args)["requests"]
        == 0
    )


def test_model_performance_error_rate_latency_percentiles_and_cost(data: Conn) -> None:
    got = rows(
        data, "select * from public.model_performance(%s, %s, %s)", rd.ORG_A, rd.START, rd.END
    )
    assert [(r["provider"], r["model"]) for r in got] == [
        ("openai", "rpt-large"),
        ("openai", "rpt-small"),
        ("anthropic", "rpt-haiku"),
    ]
    large, small, haiku = got
    assert (large["requests"], large["successful_requests"], large["failed_requests"]) == (3, 2, 1)
    assert large["error_rate"] == D("0.3333")
    # latencies 200, 500, 700
    assert (large["avg_latency_ms"], large["p50_latency_ms"], large["p95_latency_ms"]) == (
        D("466.7"),
        D("500.0"),
        D("680.0"),
    )
    assert (large["avg_input_tokens"], large["avg_output_tokens"]) == (D("1666.7"), D("33.3"))
    assert large["total_tokens"] == 5100
    assert large["cost_usd"] == D("0.011")
    assert large["avg_cost_usd"] == pytest.approx(D("0.011") / 3, abs=D("1e-18"))
    assert large["cost_display"] == D("0.003") * 5 + D("0.008") * 6
    # latencies 300, 400
    assert (small["error_rate"], small["p50_latency_ms"], small["p95_latency_ms"]) == (
        D("0"),
        D("350.0"),
        D("395.0"),
    )
    assert (haiku["requests"], haiku["cost_usd"], haiku["avg_latency_ms"]) == (
        1,
        D("0.006"),
        D("1000.0"),
    )


def test_top_users_rank_share_and_limit(data: Conn) -> None:
    got = rows(data, "select * from public.top_users(%s, %s, %s, 5)", rd.ORG_A, rd.START, rd.END)
    assert [(r["rank"], r["user_id"], r["cost_usd"], r["cost_share"]) for r in got] == [
        (1, "u1", D("0.009"), D("0.4787")),
        (2, "u2", D("0.0088"), D("0.4681")),
    ]
    assert got[0]["requests"] == 3 and got[0]["failed_requests"] == 1
    assert got[0]["total_tokens"] == 3100
    top1 = rows(data, "select * from public.top_users(%s, %s, %s, 1)", rd.ORG_A, rd.START, rd.END)
    assert [r["user_id"] for r in top1] == ["u1"]


def test_usage_trends_are_dense_with_change_average_and_running_total(conn: Conn) -> None:
    rd.load(conn)
    org = rd.ORG_B  # UTC
    for rid, at, tokens in [
        ("t1", "date_trunc('day', now()) - interval '2 days' + interval '12 hours'", 1000),
        ("t2", "date_trunc('day', now())", 3000),
    ]:
        conn.execute(
            "select * from public.record_usage(organization_id => %s, request_id => %s,"
            " provider => 'openai', model => 'rpt-large', input_tokens => %s,"
            f" occurred_at => {at})",
            (org, rid, tokens),
        )
    got = rows(conn, "select * from public.usage_trends(%s, 5)", org)
    today = conn.execute("select (now() at time zone 'UTC')::date").fetchone()[0]  # type: ignore[index]
    assert [r["day"] for r in got] == [
        date.fromordinal(today.toordinal() - i) for i in (4, 3, 2, 1, 0)
    ]
    assert [r["cost_usd"] for r in got] == [0, 0, D("0.002"), 0, D("0.006")]
    assert [r["cumulative_cost_usd"] for r in got] == [0, 0, D("0.002"), D("0.002"), D("0.008")]
    assert [r["cost_usd_change"] for r in got] == [None, 0, D("0.002"), D("-0.002"), D("0.006")]
    assert got[-1]["cost_usd_7d_avg"] == D("0.0016")
    assert got[-1]["requests"] == 1 and got[-1]["error_rate"] == 0
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select * from public.usage_trends(%s, 0)", (org,))


def test_usage_by_organization_lists_every_tenant_for_the_service(data: Conn) -> None:
    got = rows(data, "select * from public.usage_by_organization(%s, %s)", rd.START, rd.END)
    by_org = {str(r["organization_id"]): r for r in got}
    assert by_org[rd.ORG_A]["cost_usd"] == rd.TOTAL_COST
    assert by_org[rd.ORG_A]["cost_display"] == rd.TOTAL_DISPLAY
    assert by_org[rd.ORG_B]["requests"] == 1
    assert [str(r["organization_id"]) for r in got][:2] == [rd.ORG_A, rd.ORG_B]


def test_reports_reject_an_inverted_range(data: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ends"):
        data.execute("select * from public.usage_summary(%s, %s, %s)", (rd.ORG_A, rd.END, rd.START))


# ---------------------------------------------------------------------------------------
# Who may read what
# ---------------------------------------------------------------------------------------

REPORTS = [
    "select * from public.usage_summary(%s)",
    "select * from public.usage_by_day(%s)",
    "select * from public.usage_trends(%s)",
    "select * from public.usage_by_dimension(%s, 'model')",
    "select * from public.model_performance(%s)",
    "select * from public.top_users(%s)",
]


@pytest.mark.parametrize("query", REPORTS)
def test_members_read_their_organizations_reports_and_are_refused_others(
    data: Conn, query: str
) -> None:
    member = new_auth_user(data, "member@a.test")
    data.execute(
        "insert into public.organization_members values (%s, %s, 'member')", (rd.ORG_A, member)
    )
    with act_as(data, "authenticated", sub=member, rollback=True) as c:
        c.execute(query, (rd.ORG_A,)).fetchall()
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a member"),
        act_as(data, "authenticated", sub=member, rollback=True) as c,
    ):
        c.execute(query, (rd.ORG_B,))
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(data, "anon", rollback=True) as c,
    ):
        c.execute(query, (rd.ORG_A,))


def test_a_member_sees_the_same_figures_as_the_service(data: Conn) -> None:
    member = new_auth_user(data, "member@a.test")
    data.execute(
        "insert into public.organization_members values (%s, %s, 'member')", (rd.ORG_A, member)
    )
    with act_as(data, "authenticated", sub=member, rollback=True) as c:
        s = (
            c.cursor(row_factory=dict_row)
            .execute("select * from public.usage_summary(%s, %s, %s)", (rd.ORG_A, rd.START, rd.END))
            .fetchone()
        )
        orgs = c.execute(
            "select organization_id from public.usage_by_organization(%s, %s)", (rd.START, rd.END)
        ).fetchall()
        logs = c.execute(
            "select distinct organization_id::text from public.api_usage_logs"
        ).fetchall()
        rates = c.execute("select count(*) from public.currency_rates").fetchone()
    assert (
        s is not None and s["cost_usd"] == rd.TOTAL_COST and s["cost_display"] == rd.TOTAL_DISPLAY
    )
    assert [str(o[0]) for o in orgs] == [rd.ORG_A]
    assert logs == [(rd.ORG_A,)]
    assert rates == (2,)

    with act_as(data, "service_role", rollback=True) as c:
        orgs = c.execute(
            "select organization_id from public.usage_by_organization(%s, %s)", (rd.START, rd.END)
        ).fetchall()
    assert {str(o[0]) for o in orgs} >= {rd.ORG_A, rd.ORG_B}


def test_a_signed_in_outsider_sees_no_usage_rows(data: Conn) -> None:
    outsider = new_auth_user(data, "out@x.test")
    with act_as(data, "authenticated", sub=outsider, rollback=True) as c:
        assert c.execute("select count(*) from public.api_usage_logs").fetchone() == (0,)
        assert c.execute("select count(*) from public.usage_by_organization()").fetchone() == (0,)


def test_only_the_service_writes_exchange_rates(data: Conn) -> None:
    member = new_auth_user(data, "owner@a.test")
    data.execute(
        "insert into public.organization_members values (%s, %s, 'owner')", (rd.ORG_A, member)
    )
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(data, "authenticated", sub=member, rollback=True) as c,
    ):
        c.execute("insert into public.currency_rates values ('JPY', 150, now())")
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(data, "anon", rollback=True) as c,
    ):
        c.execute("select * from public.currency_rates")
    with act_as(data, "service_role", rollback=True) as c:
        c.execute("insert into public.currency_rates values ('JPY', 150, now())")


def test_summary_reads_the_covering_index_only(data: Conn) -> None:
    """The 30-day summary is an index-only range scan on (organization_id, occurred_at)."""
    data.execute("vacuum analyze public.api_usage_logs")
    data.execute("set enable_seqscan = off")  # a tiny table would otherwise be scanned whole
    plan = "\n".join(
        r[0]
        for r in data.execute(
            "explain select count(*), sum(l.cost_usd), sum(l.credits), sum(l.input_tokens)"
            " from public.api_usage_logs l where l.organization_id = %s"
            " and l.occurred_at >= %s and l.occurred_at < %s",
            (rd.ORG_A, rd.START, rd.END),
        )
    )
    assert "Index Only Scan using api_usage_logs_org_occurred_covering_idx" in plan, plan


def test_report_models_use_the_sql_report_columns_names(conn: Conn) -> None:
    """One vocabulary: every figure of the Python reports (usage_stats, dashboard, CLI report,
    get_aggregated) is named as a column of the SQL report functions, except the few derived
    fields listed here."""
    from quotaflow import reports

    rows = conn.execute(
        "select unnest(proargnames) from pg_proc where pronamespace = 'public'::regnamespace"
        " and proname in ('usage_summary', 'usage_by_day', 'usage_by_dimension',"
        " 'model_performance', 'usage_aggregate')"
    ).fetchall()
    sql_names = {r[0] for r in rows}
    derived = {"success_rate", "unique_users", "first_at", "last_at", "cost_per_1k_tokens",
               "date", "group_by", "groups",
               "unpriced_requests"}  # count of api_usage_logs.unpriced rows  # fmt: skip
    for model in (reports.Totals, reports.Group, reports.DailyPoint, reports.ModelPerformance,
                  reports.UsageTotals, reports.UsageGroup, reports.AggregatedUsage):  # fmt: skip
        assert set(model.model_fields) - sql_names - derived == set(), model.__name__
