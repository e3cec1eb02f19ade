"""Part 4: the 30-day usage report of one organization over a large usage log.

Fills api_usage_logs with ``rows`` calls (one INSERT ... SELECT from generate_series) over 90
days, appended in time order as a live log is, spread over 50 organizations with a skew (the
largest has about 14% of the rows; it is the one measured), then VACUUM (ANALYZE), which
autovacuum would have done on a live log. Then, as an authenticated member of that
organization (RLS applies, as on a dashboard), times ``usage_summary(org, now() - 30 days,
now())`` warm, median of ``runs``; the baseline is ``count(*)`` of the same rows.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import psycopg

from bench.common import ORG_ID_SQL, Row, median, org_id

FIRST_ORG = 6001
ORGS = 50
BIG_ORG = org_id(FIRST_ORG)
# Log rows as record_usage writes them: four models, cache reads, 3% failures, tags.
FILL = f"""
insert into public.api_usage_logs
  (organization_id, request_id, user_id, session_id, provider, model, input_tokens,
   output_tokens, cached_input_tokens, reasoning_tokens, cost_usd, credits, success,
   latency_ms, finish_reason, error_code, tags, occurred_at, recorded_at)
select {ORG_ID_SQL.format(n=f"{FIRST_ORG} + floor({ORGS} * random() ^ 2)::int")},
       'hist-' || g, 'user-' || (g %% 997), 'sess-' || (g %% 49999), m.provider, m.model,
       t.i, t.o, t.i / 4, 0,
       round((t.i * m.pin + t.o * m.pout) / 1e6, 10),
       round((t.i * m.pin + t.o * m.pout) / 1e3, 10),
       t.ok, 200 + (random() * 2000)::int,
       case when t.ok then 'stop' end, case when not t.ok then 'rate_limited' end,
       array['bench'], t.at, t.at
from generate_series(1, %(rows)s) g
cross join lateral (
  select 200 + (random() * 3000)::bigint as i, 20 + (random() * 800)::bigint as o,
         random() > 0.03 as ok,
         now() - interval '90 days' * (1 - g::float8 / %(rows)s) as at
) t
cross join lateral (
  select (array['openai', 'openai', 'anthropic', 'google'])[1 + g %% 4] as provider,
         (array['gpt-4o-mini', 'gpt-4o', 'claude-sonnet-4-5', 'gemini-2.5-flash'])
           [1 + g %% 4] as model,
         (array[0.15, 2.5, 3, 0.3])[1 + g %% 4]::numeric as pin,
         (array[0.6, 10, 15, 2.5])[1 + g %% 4]::numeric as pout
) m
"""
# The range is fixed once per run ([now - 30 days, now) at the start), so every run of both
# queries reads the same rows.
SUMMARY = "select * from public.usage_summary(%(org)s, %(lo)s, %(hi)s)"
COUNT = (
    "select count(*) from public.api_usage_logs where organization_id = %(org)s"
    " and occurred_at >= %(lo)s and occurred_at < %(hi)s"
)


def fill(url: str, rows: int) -> tuple[float, float]:
    """Fills the log; returns (seconds it took, fraction of its pages marked all-visible).

    VACUUM runs again (up to 3 times) while under 99% of the pages are all-visible: a vacuum
    racing other sessions' transactions (the machine is shared) may leave pages unmarked, which
    a live log's autovacuum would mark on its next pass."""
    t = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into public.organizations (id, name)"
            f" select {ORG_ID_SQL.format(n='g')}, 'bench report ' || g"
            f" from generate_series({FIRST_ORG}, {FIRST_ORG + ORGS - 1}) g"
        )
        conn.execute("set synchronous_commit = off")
        conn.execute("set maintenance_work_mem = '256MB'")
        conn.execute(FILL, {"rows": rows})
        conn.execute("vacuum (analyze) public.api_usage_logs")
        visible = 0.0
        for _ in range(3):
            row = conn.execute(
                "select relallvisible::float8 / greatest(relpages, 1) from pg_class"
                " where oid = 'public.api_usage_logs'::regclass"
            ).fetchone()
            visible = float(row[0]) if row else 0.0
            if visible >= 0.99:
                break
            conn.execute("vacuum public.api_usage_logs")
    return time.monotonic() - t, visible


def _as_member(conn: psycopg.Connection[Any], user: uuid.UUID) -> None:
    conn.execute("set role authenticated")
    claims = json.dumps({"sub": str(user), "role": "authenticated", "aud": "authenticated"})
    conn.execute("select set_config('request.jwt.claims', %s, false)", (claims,))


def _time(
    conn: psycopg.Connection[Any], query: str, args: dict[str, Any], runs: int
) -> tuple[float, Any]:
    for _ in range(2):  # warm: plans cached, pages in memory
        row = conn.execute(query, args).fetchone()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        row = conn.execute(query, args).fetchone()
        times.append((time.perf_counter() - t) * 1000)
    return median(times), row


def _plan(conn: psycopg.Connection[Any], member: uuid.UUID, args: dict[str, Any]) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the summary as the member: its totals line, and the scan
    of the log inside the function (auto_explain of nested statements, sent as notices)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    try:
        conn.execute("load 'auto_explain'")
    except psycopg.Error:  # not installed: the outer plan alone
        pass
    else:
        for stmt in ("set auto_explain.log_min_duration = 0", "set auto_explain.log_analyze = on",
                     "set auto_explain.log_buffers = on",
                     "set auto_explain.log_nested_statements = on",
                     "set auto_explain.log_level = notice"):
            conn.execute(stmt)
    _as_member(conn, member)
    for _ in range(2):  # the second run is warm (function compiled, plans cached)
        notices.clear()
        plan = conn.execute("explain (analyze, buffers) " + SUMMARY, args).fetchall()
    outer = [r[0].strip() for r in plan if "Execution Time" in r[0] or "Buffers" in r[0]]
    inner = [re.sub(r"\s*\(cost=[^)]*\)", "", line.strip().lstrip("-> "))
             for n in notices if " on api_usage_logs" in n for line in n.splitlines()
             if " on api_usage_logs" in line or "Heap Fetches" in line]
    return ["usage_summary plan: " + " | ".join(outer)] + [f"  inside: {s}" for s in inner[:3]]


def run(url: str, *, rows: int, runs: int) -> tuple[list[Row], list[str]]:
    seconds, visible = fill(url, rows)
    member = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("insert into auth.users (id, email) values (%s, 'bench@example.test')",
                     (member,))
        conn.execute("insert into public.organization_members (organization_id, user_id, role)"
                     " values (%s, %s, 'owner')", (BIG_ORG, member))
    # No server-side prepared statements, as the client's pool (prepare_threshold=None).
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        _as_member(conn, member)
        lo, hi = conn.execute("select now() - interval '30 days', now()").fetchone() or ()
        args = {"org": BIG_ORG, "lo": lo, "hi": hi}
        count_ms, (in_range,) = _time(conn, COUNT, args, runs)
        summary_ms, summary = _time(conn, SUMMARY, args, runs)
    with psycopg.connect(url, autocommit=True) as conn:
        plan = _plan(conn, member, args)
    assert summary is not None and summary[2] == in_range, "summary disagrees with count(*)"
    notes = [f"part 4: {rows:,} log rows filled and vacuumed in {seconds:.0f} s"
             f" ({visible:.0%} of pages all-visible); the measured organization has"
             f" {in_range:,} rows in its last 30 days", *plan]
    return [Row(
        part="4 30-day report",
        figure=f"usage_summary, {rows / 1e6:g}M rows, {in_range:,} in range",
        value=summary_ms,
        unit="ms",
        baseline=count_ms,
        baseline_label="count(*) same range",
        ratio=summary_ms / count_ms,
        target=("value", "<=", 200.0),
        why="the range's rows are read one by one (aggregates over every call in 30 days)",
    )], notes
