"""Python analytics (seed 002's UsageTracker queries) over the report data set: filtered
records, aggregates by every grouping, and exports that round-trip in each format."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from quotaflow import ConfigurationError, HttpBackend, Tracker, ValidationError
from quotaflow.backends import PostgresBackend
from quotaflow.reports.analytics import (
    EXPORT_COLUMNS,
    AggregatedUsage,
    UsageFilters,
    count_records,
    export,
    get_aggregated,
    get_records,
)

from tests import report_data as rd
from tests.db import PgServer

D = Decimal
IN_RANGE = [c.request_id for c in rd.CALLS]


@pytest.fixture(scope="module")
def backend(qf_template: Any, pg_server: PgServer) -> Iterator[PostgresBackend]:
    """One database for the module: every test here only reads."""
    with rd.module_database(qf_template, pg_server, "analytics") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            rd.load(conn)
        pg = PostgresBackend(url, max_size=2)
        yield pg
        pg.close()


def ids(records: list[Any]) -> list[str]:
    return [r.request_id for r in records]


def f(**kw: Any) -> UsageFilters:
    return UsageFilters(**{"organization_id": rd.ORG_A, "start": rd.START, "end": rd.END, **kw})


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["a6", "a5", "a4", "a3", "a2", "a1"]),
        ({"user_id": "u1"}, ["a4", "a3", "a1"]),
        ({"conversation_id": "c1"}, ["a4", "a3", "a1"]),
        ({"provider": "anthropic"}, ["a3"]),
        ({"provider": "Gemini"}, []),  # normalised to google
        ({"model": "RPT-Small"}, ["a6", "a2"]),
        ({"success": False}, ["a4"]),
        ({"success": True, "user_id": "u2", "provider": "openai"}, ["a5", "a2"]),
        ({"tags": ["chat"]}, ["a3", "a1"]),
        ({"tags": ["chat", "enem"]}, ["a3"]),
        ({"end": datetime(2026, 1, 11, tzinfo=timezone.utc)}, ["a2", "a1"]),
        ({"start": date(2026, 1, 12)}, ["a6", "a5", "a4"]),
    ],
)
def test_get_records_filters(
    backend: PostgresBackend, filters: dict[str, Any], expected: list[str]
) -> None:
    assert ids(get_records(backend, f(**filters))) == expected


def test_get_records_rows_carry_everything_logged(backend: PostgresBackend) -> None:
    (a3,) = get_records(backend, f(tags=["enem"], user_id="u1"))
    assert (a3.provider, a3.model, a3.user_id, a3.conversation_id) == (
        "anthropic",
        "rpt-haiku",
        "u1",
        "c1",
    )
    assert (a3.usage.input_tokens, a3.usage.output_tokens, a3.cost, a3.credits) == (
        1000,
        1000,
        D("0.006"),
        D("6"),
    )
    assert a3.tags == ["chat", "enem"] and a3.latency_ms == 1000 and a3.success
    assert a3.created_at == datetime(2026, 1, 11, 10, tzinfo=timezone.utc)


def test_get_records_pages_and_accepts_seed_camel_case(backend: PostgresBackend) -> None:
    assert ids(get_records(backend, f(), limit=2, offset=1)) == ["a5", "a4"]
    camel = {"organizationId": rd.ORG_A, "userId": "u2", "startDate": "2026-01-10T00:00:00Z"}
    assert ids(get_records(backend, camel)) == ["a5", "a2"]
    assert count_records(backend, {"organization_id": rd.ORG_A}) == 8
    with pytest.raises(ValidationError):
        get_records(backend, {"organization_id": "not-a-uuid"})
    with pytest.raises(ValidationError):
        get_records(backend, f(), limit=10**6)


def test_get_aggregated_totals(backend: PostgresBackend) -> None:
    """get_aggregated reads usage_aggregate: the report functions' figures and field names."""
    agg = get_aggregated(backend, f())
    assert (agg.requests, agg.successful_requests, agg.failed_requests) == (6, 5, 1)
    assert (agg.input_tokens, agg.output_tokens, agg.total_tokens) == (9000, 2600, 11600)
    assert (agg.cost_usd, agg.credits) == (rd.TOTAL_COST, rd.TOTAL_CREDITS)
    assert agg.avg_cost_usd == pytest.approx(rd.TOTAL_COST / 6, abs=D("1e-18"))
    assert agg.avg_latency_ms == D("516.7")
    assert agg.groups == [] and agg.group_by is None
    assert agg.first_at == datetime(2026, 1, 10, 9, tzinfo=timezone.utc)
    assert agg.cost_display == rd.TOTAL_DISPLAY  # the same figure as usage_summary's
    camel_shape = agg.model_dump(by_alias=True)
    assert camel_shape["requests"] == 6 and camel_shape["avgCostUsd"] is not None


def test_get_aggregated_with_no_match_is_zero(backend: PostgresBackend) -> None:
    agg = get_aggregated(backend, f(user_id="nobody"), group_by="model")
    assert (agg.requests, agg.cost_usd, agg.groups) == (0, 0, [])
    assert agg.avg_cost_usd is None and agg.avg_latency_ms is None


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        ("provider", [("openai", 5, 1, D("0.0128")), ("anthropic", 1, 0, D("0.006"))]),
        (
            "model",
            [("rpt-large", 3, 1, D("0.011")), ("rpt-haiku", 1, 0, D("0.006")),
             ("rpt-small", 2, 0, D("0.0018"))],
        ),
        ("user", [("u1", 3, 1, D("0.009")), ("u2", 2, 0, D("0.0088")), (None, 1, 0, D("0.001"))]),
        (
            "conversation",
            [("c1", 3, 1, D("0.009")), ("c3", 1, 0, D("0.008")), (None, 1, 0, D("0.001")),
             ("c2", 1, 0, D("0.0008"))],
        ),
        # The organization's local days (São Paulo): call 4 is on the 11th there.
        (
            "date",
            [("2026-01-10", 2, 0, D("0.0038")), ("2026-01-11", 2, 1, D("0.006")),
             ("2026-01-12", 2, 0, D("0.009"))],
        ),
    ],
)  # fmt: skip
def test_get_aggregated_groups(
    backend: PostgresBackend, group_by: Any, expected: list[tuple[Any, ...]]
) -> None:
    agg = get_aggregated(backend, f(), group_by=group_by)
    got = [(g.key, g.requests, g.failed_requests, g.cost_usd) for g in agg.groups]
    assert got == expected
    assert agg.cost_usd == rd.TOTAL_COST
    assert sum(g.requests for g in agg.groups) == 6


def test_get_aggregated_group_figures(backend: PostgresBackend) -> None:
    by_user = get_aggregated(backend, f(), group_by="user").by_key()
    u2 = by_user["u2"]
    assert (u2.input_tokens, u2.output_tokens, u2.credits) == (6000, 500, D("8.8"))
    assert u2.avg_cost_usd == D("0.0044") and u2.avg_latency_ms == D("500.0")
    with pytest.raises(ValidationError):
        get_aggregated(backend, f(), group_by="planet")  # type: ignore[arg-type]


def _expected_rows(backend: PostgresBackend) -> list[dict[str, Any]]:
    with backend.connection() as conn:
        return list(
            conn.execute(
                "select * from public.api_usage_logs where organization_id = %s"
                " order by occurred_at, id",
                (rd.ORG_A,),
            ).fetchall()
        )


def test_export_json_round_trips(backend: PostgresBackend) -> None:
    out = io.StringIO()
    progress: list[int] = []
    n = export(backend, {"organization_id": rd.ORG_A}, "json", out, batch_size=3,
               progress=progress.append)  # fmt: skip
    assert n == 8 and progress == [3, 6, 8]
    rows = json.loads(out.getvalue())
    assert [r["request_id"] for r in rows] == [r["request_id"] for r in _expected_rows(backend)]
    assert list(rows[0]) == list(EXPORT_COLUMNS)
    for got, want in zip(rows, _expected_rows(backend), strict=True):
        assert D(got["cost_usd"]) == want["cost_usd"]
        assert D(got["credits"]) == want["credits"]
        assert datetime.fromisoformat(got["occurred_at"]) == want["occurred_at"]
        assert got["tags"] == want["tags"] and got["metadata"] == want["metadata"]
        assert got["success"] is want["success"] and got["latency_ms"] == want["latency_ms"]
        assert got["id"] == str(want["id"]) and got["total_tokens"] == want["total_tokens"]


def test_export_jsonl_round_trips_with_filters(backend: PostgresBackend) -> None:
    out = io.StringIO()
    assert export(backend, f(success=False), "jsonl", out) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert (row["request_id"], row["success"], row["error_code"]) == ("a4", False, "rate_limit")


def test_export_csv_round_trips(backend: PostgresBackend) -> None:
    out = io.StringIO()
    assert export(backend, {"organization_id": rd.ORG_A}, "csv", out, batch_size=5) == 8
    out.seek(0)
    reader = csv.DictReader(out)
    assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
    rows = list(reader)
    for got, want in zip(rows, _expected_rows(backend), strict=True):
        assert got["request_id"] == want["request_id"]
        assert D(got["cost_usd"]) == want["cost_usd"]
        assert int(got["input_tokens"]) == want["input_tokens"]
        assert got["success"] == ("true" if want["success"] else "false")
        assert json.loads(got["tags"]) == want["tags"]
        assert got["user_id"] == (want["user_id"] or "")
        assert datetime.fromisoformat(got["occurred_at"]) == want["occurred_at"]


def test_export_of_nothing_is_valid_in_each_format(backend: PostgresBackend) -> None:
    for fmt, check in [
        ("json", lambda s: json.loads(s) == []),
        ("jsonl", lambda s: s == ""),
        ("csv", lambda s: s.strip() == ",".join(EXPORT_COLUMNS)),
    ]:
        out = io.StringIO()
        assert export(backend, f(user_id="nobody"), fmt, out) == 0  # type: ignore[arg-type]
        assert check(out.getvalue()), (fmt, out.getvalue())
    with pytest.raises(ValidationError):
        export(backend, f(), "xml", io.StringIO())  # type: ignore[arg-type]


def test_tracker_methods(backend: PostgresBackend) -> None:
    tracker = Tracker(backend=backend)
    assert ids(tracker.get_records(f(user_id="u2"))) == ["a5", "a2"]
    agg = tracker.get_aggregated(f(), group_by="provider")
    assert isinstance(agg, AggregatedUsage) and agg.requests == 6
    text = tracker.export("csv", f(model="rpt-haiku"))
    assert text.splitlines()[1].split(",")[1] == "a3"
    out = io.StringIO()
    assert tracker.export("jsonl", f(), out) == 6


def test_analytics_need_the_postgres_backend() -> None:
    http = HttpBackend("http://127.0.0.1:9", "key")
    tracker = Tracker(backend=http)
    with pytest.raises(ConfigurationError, match="Postgres backend"):
        tracker.get_records({"organization_id": rd.ORG_A})
    with pytest.raises(ConfigurationError, match="Postgres backend"):
        tracker.on_alert(print)
    http.close()
