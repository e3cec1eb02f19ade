"""Part 1: reserve + settle through the SQL functions vs. a raw INSERT + UPDATE, with pgbench.

A tracked call is what Tracker sends: ``reserve_quota(...)`` and later ``record_usage(...)``,
each one autocommit statement. The raw baseline is what a hand-rolled logger does after the
call: one transaction of ``insert into api_usage_logs`` + ``update usage_quotas``. Both run in
pgbench's extended-protocol mode without server-side prepared statements, as psycopg does.

Request ids are ``r<pgbench run>c<client>-<random 1..1e12>``: a repeat would take the
idempotent path and inflate the figure, but the ~5,000 calls of one client in one run collide
with probability ~1e-5. The part checks that the transactions wrote as many log rows.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import ORG_ID_SQL, Row, libpq_env, median

ORGS = 1000
ORG = ORG_ID_SQL.format(n=":org")
RID = "'r' || :run || 'c' || :client_id || '-' || :rid"
_RUNS = itertools.count(1)
PICK = "\\set org random(1, {orgs})\n\\set rid random(1, 1000000000000)\n"

TRACKED = PICK + (
    f"select reservation_id from public.reserve_quota(organization_id => {ORG},"
    f" request_id => {RID}, provider => 'openai', model => 'gpt-4o-mini',"
    " estimated_cost => null, input_tokens => 1000, max_output_tokens => 200,"
    " user_id => 'bench-user', ttl_seconds => 300);\n"
    f"select log_id from public.record_usage(organization_id => {ORG}, request_id => {RID},"
    " provider => 'openai', model => 'gpt-4o-mini', input_tokens => 1000, output_tokens => 180,"
    " user_id => 'bench-user', latency_ms => 420, finish_reason => 'stop');\n"
)

RAW = PICK + (
    "begin;\n"
    "insert into public.api_usage_logs (organization_id, request_id, user_id, provider, model,"
    " input_tokens, output_tokens, cost_usd, credits, latency_ms, finish_reason)"
    f" values ({ORG}, {RID}, 'bench-user', 'openai', 'gpt-4o-mini', 1000, 180, 0.000258, 0.258,"
    " 420, 'stop') on conflict on constraint api_usage_logs_request_unique do nothing;\n"
    f"update public.usage_quotas set current_usage = current_usage + 0.000258"
    f" where organization_id = {ORG};\n"
    "end;\n"
)

SETUP = f"""
insert into public.organizations (id, name)
select {ORG_ID_SQL.format(n="g")}, 'bench org ' || g from generate_series(1, {ORGS}) g
on conflict do nothing;
insert into public.usage_quotas (organization_id, name, quota_type, metric, quota_limit)
select {ORG_ID_SQL.format(n="g")}, 'bench usd', 'monthly', 'usd', 1000000000
from generate_series(1, {ORGS}) g;
"""


def pgbench_path() -> str:
    found = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(found).exists():
        raise RuntimeError("pgbench not found: install postgresql-client (or put it on PATH)")
    return found


def _log_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from public.api_usage_logs").fetchone()
        return int(row[0]) if row else 0


def _pgbench(
    url: str, script: str, clients: int, seconds: int, options: str = ""
) -> tuple[float, int]:
    """Runs one script for ``seconds`` (0: 20 transactions per client, for --smoke); returns
    (tps, transactions) after checking one log row per transaction."""
    length = ["-T", str(seconds)] if seconds > 0 else ["-t", "20"]
    args = [pgbench_path(), "-n", "-M", "extended", "-D", f"run={next(_RUNS)}",
            "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)), *length]
    env = {**os.environ, **libpq_env(url), **({"PGOPTIONS": options} if options else {})}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    before = _log_rows(url)
    try:
        out = subprocess.run([*args, "-f", f.name], env=env, capture_output=True, text=True,
                             check=False)
    finally:
        os.unlink(f.name)
    tps = re.search(r"^tps = ([0-9.]+)", out.stdout, re.M)
    done = re.search(r"actually processed: (\d+)", out.stdout)
    if out.returncode != 0 or not tps or not done:
        raise RuntimeError(f"pgbench failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    n = int(done.group(1))
    written = _log_rows(url) - before
    if abs(written - n) > 1:  # one collision would be noise; more means something is wrong
        raise RuntimeError(f"{n} transactions wrote {written} log rows: not one row per call")
    return float(tps.group(1)), n


def _profile(url: str, clients: int, seconds: int) -> tuple[float, str]:
    """Where a tracked call's server time goes: per-function self time over a short extra run
    with track_functions on (not part of the figures). Returns (ms per call, note)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_stat_reset()")
    _, n = _pgbench(url, TRACKED.format(orgs=ORGS), clients, seconds, "-c track_functions=all")
    deadline = time.monotonic() + 3
    with psycopg.connect(url, autocommit=True) as conn:
        while True:  # pgbench's backends report their statistics as they exit, just after it
            rows = conn.execute(
                "select schemaname || '.' || funcname, self_time, calls"
                " from pg_stat_user_functions order by self_time desc"
            ).fetchall()
            calls = {name: c for name, _, c in rows}
            if calls.get("public.record_usage", 0) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    per_call = sum(ms for _, ms, _ in rows) / max(n, 1)
    top = ", ".join(f"{name} {ms * 1000 / n:.0f} us" for name, ms, _ in rows[:6])
    return per_call, (f"part 1 profile ({n:,} tracked calls, track_functions=all): SQL functions"
                      f" take {per_call:.2f} ms of server time per call; self time per call: {top}")


def run(
    url: str, *, seconds: int, repeats: int, clients: int, warmup: int
) -> tuple[list[Row], list[str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
        conn.execute("vacuum analyze public.organizations, public.usage_quotas")
    rows: list[Row] = []
    for label, orgs in (("spread over 1,000 orgs", ORGS), ("one hot org", 1)):
        tps: dict[str, list[float]] = {"raw": [], "tracked": []}
        if warmup:
            _pgbench(url, RAW.format(orgs=orgs), clients, warmup)
            _pgbench(url, TRACKED.format(orgs=orgs), clients, warmup)
        for i in range(repeats):
            # Alternate the order so drift (autovacuum, cache, neighbours) hits both alike.
            order = ("raw", "tracked") if i % 2 == 0 else ("tracked", "raw")
            for kind in order:
                script = (RAW if kind == "raw" else TRACKED).format(orgs=orgs)
                tps[kind].append(_pgbench(url, script, clients, seconds)[0])
        raw, tracked = median(tps["raw"]), median(tps["tracked"])
        hot = orgs == 1
        rows.append(Row(
            part="1 reserve+settle",
            figure=f"{label}, {clients} clients",
            value=tracked,
            unit="calls/s",
            baseline=raw,
            baseline_label="raw insert+update",
            ratio=tracked / raw,
            target=("value", ">=", 1000.0) if hot else ("ratio", ">=", 0.6),
        ))
    per_call, note = _profile(url, clients, min(3, seconds))
    rows[0].why = (f"the SQL functions take {per_call:.1f} ms of server time per call (see the"
                   " profile note), and a call commits twice (reserve, settle) vs once")
    rows[1].why = ("calls queue on the organization's quota row: reserve and settle each hold"
                   " its lock through the rest of the function and a synchronous commit,"
                   f" {per_call:.1f} ms of SQL per call in all")
    return rows, [note]
