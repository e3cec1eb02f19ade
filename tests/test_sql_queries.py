"""sql/queries/*.sql run as written with psql: each file's columns are the ones its header
promises, and its figures are the hand-computed ones of ``tests/report_data.py``."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import report_data as rd
from tests.db import REPO_ROOT, PgServer

D = Decimal
QUERIES = REPO_ROOT / "sql" / "queries"
ORG_C = "00000000-0000-4000-8000-0000000c0001"  # UTC, calls relative to now()
Rows = list[dict[str, str]]


def contract(path: Path) -> list[str]:
    """The column names listed after ``-- Columns:`` (continued on ``--   `` lines)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-- Columns:"))
    text = lines[start].removeprefix("-- Columns:")
    for line in lines[start + 1 :]:
        if not re.match(r"^--\s{2,}\S", line):
            break
        text += " " + line[2:]
    return [c.strip() for c in text.split(",")]


def run_psql(db_url: str, name: str, **variables: str) -> tuple[list[str], Rows]:
    psql = shutil.which("psql")
    assert psql, "psql is not installed (scripts/setup.sh installs PostgreSQL)"
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--csv", "-d", db_url]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    args += ["-f", str(QUERIES / name)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    reader = csv.DictReader(io.StringIO(proc.stdout))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def data_url(qf_template: Any, pg_server: PgServer) -> Iterator[str]:
    """One database for the whole module (the queries only read)."""
    with rd.module_database(qf_template, pg_server, "queries") as url:
        yield _load(url)


def _load(db_url: str) -> str:
    with psycopg.connect(db_url, autocommit=True) as conn:
        rd.load(conn)
        conn.execute(
            "insert into public.organizations (id, name, time_zone) values (%s, 'Now Org', 'UTC')",
            (ORG_C,),
        )
        for rid, user, ago, tokens in [
            ("c1", "u1", "1 hour", 1000),
            ("c2", "u1", "1 hour 1 minute", 2000),
            ("c3", "u2", "2 days", 500),
            ("c4", "u1", "40 days", 9000),  # outside the last 30 days
        ]:
            conn.execute(
                "select * from public.record_usage(organization_id => %s, request_id => %s,"
                " provider => 'openai', model => 'rpt-large', input_tokens => %s, user_id => %s,"
                " occurred_at => now() - %s::interval)",
                (ORG_C, rid, tokens, user, ago),
            )
        conn.execute(
            "insert into public.usage_quotas (organization_id, name, quota_type, metric,"
            " quota_limit) values (%s, 'Daily spend', 'daily', 'usd', 0.002)",
            (ORG_C,),
        )
        # 0.002: reaches 80% and 100% of the daily 0.002 at once.
        conn.execute(
            "select * from public.record_usage(organization_id => %s, request_id => 'c5',"
            " provider => 'openai', model => 'rpt-large', input_tokens => 1000)",
            (ORG_C,),
        )
    return db_url


RANGE = {"start_at": rd.START.isoformat(), "end_at": rd.END.isoformat()}


def first(rows: Rows, column: str) -> list[str]:
    return [r[column] for r in rows]


def check_summary(rows: Rows) -> None:
    (s,) = rows
    assert (s["requests"], s["successful_requests"], s["failed_requests"]) == ("6", "5", "1")
    assert D(s["cost_usd"]) == rd.TOTAL_COST and D(s["cost_display"]) == rd.TOTAL_DISPLAY
    assert (s["display_currency"], s["total_tokens"]) == ("BRL", "11600")


def check_by_day(rows: Rows) -> None:
    assert [(r["day"], r["requests"], D(r["cost_usd"])) for r in rows] == [
        ("2026-01-10", "2", D("0.0038")),
        ("2026-01-11", "1", D("0.006")),
        ("2026-01-12", "3", D("0.009")),
    ]


def check_by_user(rows: Rows) -> None:
    assert [(r["user_id"], D(r["cost_usd"])) for r in rows] == [
        ("u1", D("0.009")),
        ("u2", D("0.0088")),
        ("", D("0.001")),
    ]


def check_by_model(rows: Rows) -> None:
    assert first(rows, "model") == ["rpt-large", "rpt-haiku", "rpt-small"]
    assert D(rows[0]["cost_display"]) == D("0.063")


def check_by_provider(rows: Rows) -> None:
    assert [(r["provider"], r["requests"]) for r in rows] == [("openai", "5"), ("anthropic", "1")]


def check_by_conversation(rows: Rows) -> None:
    assert first(rows, "conversation_id") == ["c1", "c3", "", "c2"]


def check_by_tag(rows: Rows) -> None:
    assert [(r["tag"], r["requests"]) for r in rows] == [("", "3"), ("chat", "2"), ("enem", "2")]


def check_model_performance(rows: Rows) -> None:
    large = rows[0]
    assert (large["model"], large["error_rate"], large["p95_latency_ms"]) == (
        "rpt-large",
        "0.3333",
        "680.0",
    )


def check_top_users(rows: Rows) -> None:
    assert [(r["rank"], r["user_id"], r["cost_share"]) for r in rows] == [("1", "u1", "0.4787")]


def check_by_organization(rows: Rows) -> None:
    by_org = {r["organization_id"]: r for r in rows}
    assert D(by_org[rd.ORG_A]["cost_usd"]) == rd.TOTAL_COST
    assert by_org[rd.ORG_B]["requests"] == "1"


def check_daily_by_user(rows: Rows) -> None:
    got = [(r["user_id"], r["total_tokens"], D(r["total_cost"]), r["request_count"]) for r in rows]
    # u1's calls of an hour ago (c1, c2) may straddle midnight: sum their rows.
    u1 = [g for g in got if g[0] == "u1"]
    assert sum(int(g[1]) for g in u1) == 3000
    assert sum(D(g[2]) for g in u1) == D("0.006")
    assert [g[1:] for g in got if g[0] == ""] == [("1000", D("0.002"), "1")]  # c5, no user
    assert ("u2", "500", D("0.001"), "1") in got
    assert all(int(r["total_tokens"]) < 9000 for r in rows)  # c4 is 40 days old
    assert rows == sorted(rows, key=lambda r: r["date"], reverse=True)


def check_trends(rows: Rows) -> None:
    assert len(rows) == 3
    assert sum(D(r["cost_usd"]) for r in rows) == D(rows[-1]["cumulative_cost_usd"])
    assert D(rows[-1]["cumulative_cost_usd"]) >= D("0.002")  # at least c5 (now)


def check_quota_status(rows: Rows) -> None:
    (q,) = rows
    assert (q["name"], q["quota_type"], q["metric"], D(q["quota_limit"])) == (
        "Daily spend",
        "daily",
        "usd",
        D("0.002"),
    )
    assert D(q["current_usage"]) == D("0.002")


def check_check_quota(rows: Rows) -> None:
    (q,) = rows
    assert (q["allowed"], q["quota_type"], D(q["remaining"])) == ("f", "daily", D("0"))


def check_alerts(rows: Rows) -> None:
    # Both crossed by one call: same created_at, newest (100%) first by id.
    assert [(r["quota_name"], r["threshold_percent"]) for r in rows] == [
        ("Daily spend", "100.00"),
        ("Daily spend", "80.00"),
    ]


def check_recent(rows: Rows) -> None:
    assert first(rows, "request_id") == ["a-end", "a6", "a5", "a4"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "FAILED"]
    assert rows[3]["error_code"] == "rate_limit"


CASES: list[tuple[str, dict[str, str], Callable[[Rows], None]]] = [
    ("usage_summary.sql", {"org_id": rd.ORG_A, **RANGE}, check_summary),
    ("usage_by_day.sql", {"org_id": rd.ORG_A, **RANGE, "time_zone": "UTC"}, check_by_day),
    ("usage_by_user.sql", {"org_id": rd.ORG_A, **RANGE}, check_by_user),
    ("usage_by_model.sql", {"org_id": rd.ORG_A, **RANGE}, check_by_model),
    ("usage_by_provider.sql", {"org_id": rd.ORG_A, **RANGE}, check_by_provider),
    ("usage_by_conversation.sql", {"org_id": rd.ORG_A, **RANGE}, check_by_conversation),
    ("usage_by_tag.sql", {"org_id": rd.ORG_A, **RANGE}, check_by_tag),
    ("model_performance.sql", {"org_id": rd.ORG_A, **RANGE}, check_model_performance),
    ("top_users.sql", {"org_id": rd.ORG_A, **RANGE, "limit": "1"}, check_top_users),
    ("usage_by_organization.sql", RANGE, check_by_organization),
    ("daily_usage_by_user_last_30_days.sql", {"org_id": ORG_C}, check_daily_by_user),
    ("usage_trends.sql", {"org_id": ORG_C, "days": "3"}, check_trends),
    ("quota_status.sql", {"org_id": ORG_C}, check_quota_status),
    (
        "check_quota.sql",
        {"org_id": ORG_C, "provider": "openai", "model": "rpt-large", "estimated_cost": "0.01"},
        check_check_quota,
    ),
    ("quota_alerts.sql", {"org_id": ORG_C}, check_alerts),
    ("recent_calls.sql", {"org_id": rd.ORG_A, "limit": "4"}, check_recent),
]


def test_every_query_file_is_tested_and_documents_how_to_run_it() -> None:
    files = sorted(p.name for p in QUERIES.glob("*.sql"))
    assert files == sorted(name for name, _, _ in CASES)
    for name in files:
        text = (QUERIES / name).read_text()
        assert text.startswith("-- "), name
        assert f"-f sql/queries/{name}" in text, name
        assert contract(QUERIES / name), name


@pytest.mark.parametrize(("name", "variables", "check"), CASES, ids=[c[0] for c in CASES])
def test_query_file_returns_its_columns_and_the_expected_figures(
    data_url: str, name: str, variables: dict[str, str], check: Callable[[Rows], None]
) -> None:
    header, rows = run_psql(data_url, name, **variables)
    assert header == contract(QUERIES / name)
    check(rows)


def test_a_query_file_without_org_id_says_how_to_run_it(db_url: str) -> None:
    psql = shutil.which("psql")
    assert psql
    proc = subprocess.run(
        [psql, "-X", "-q", "-d", db_url, "-f", str(QUERIES / "usage_summary.sql")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "-v org_id=" in proc.stderr
    assert proc.stdout == ""
