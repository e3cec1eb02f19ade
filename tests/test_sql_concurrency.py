"""Quotas under concurrency: 64 connections at once, each its own psycopg connection.

Threads start together on a ``threading.Barrier``. A monitor connection samples the quotas
while they run and records any moment at which ``current_usage + reserved > quota_limit``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

D = Decimal
THREADS = 64
Conn = psycopg.Connection[Any]


def _connect(db_url: str) -> Conn:
    """Connect, retrying briefly if the server is momentarily out of connection slots."""
    for attempt in range(50):
        try:
            return psycopg.connect(db_url, autocommit=True)
        except psycopg.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _make_org(conn: Conn) -> Any:
    row = conn.execute(
        "insert into public.organizations (name) values ('Concurrent') returning id"
    ).fetchone()
    assert row is not None
    return row[0]


def _add_quota(conn: Conn, org: Any, limit: Any, **kw: Any) -> Any:
    cols = {"organization_id": org, "quota_limit": D(str(limit)), "quota_type": "daily", **kw}
    row = conn.execute(
        f"insert into public.usage_quotas ({', '.join(cols)})"
        f" values ({', '.join(f'%({k})s' for k in cols)}) returning id",
        cols,
    ).fetchone()
    assert row is not None
    return row[0]


def _run_threads(
    db_url: str, work: Callable[[int, Conn], Any], n: int = THREADS
) -> tuple[list[Any], list[BaseException]]:
    """Run ``work(i, conn)`` in n threads with their own connections, started together."""
    conns = [_connect(db_url) for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i, conns[i])
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "threads hung"
    finally:
        for c in conns:
            c.close()
    return results, errors


class Monitor:
    """Samples quotas on its own connection until stopped; keeps every violation seen."""

    def __init__(self, db_url: str) -> None:
        self.conn = _connect(db_url)
        self.samples = 0
        self.violations: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.conn.execute(
                "select id, quota_limit, current_usage, reserved from public.usage_quotas"
                " where enforcement = 'hard' and current_usage + reserved > quota_limit"
            ).fetchall()
            self.violations.extend(rows)
            self.samples += 1

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.conn.close()


def test_server_allows_64_connections_plus_fixtures(conn: Conn) -> None:
    """max_connections leaves room for 64 workers, a monitor and the fixtures' connections."""
    row = conn.execute("select current_setting('max_connections')::int").fetchone()
    assert row is not None
    assert row[0] >= THREADS + 8, f"max_connections = {row[0]} is too small for these tests"


def test_64_concurrent_reserves_admit_exactly_the_k_that_fit(db_url: str, conn: Conn) -> None:
    """Limit $1.00, $0.10 each: of 64 simultaneous reserve_quota calls exactly 10 succeed,
    54 get QF001, and usage + reserved never exceeds the limit at any sampled moment;
    settling the 10 leaves usage = the sum of their logged costs and nothing reserved."""
    org = _make_org(conn)
    qid = _add_quota(conn, org, "1.00")
    k = 10

    def work(i: int, c: Conn) -> str:
        try:
            c.execute(
                "select * from public.reserve_quota(%s, %s, 'openai', 'gpt-4o', 0.10)",
                (org, f"req-{i}"),
            )
        except psycopg.Error as exc:
            return exc.sqlstate or "?"
        return "ok"

    with Monitor(db_url) as monitor:
        results, errors = _run_threads(db_url, work)
        assert not errors, errors
        assert sorted(set(results)) == ["QF001", "ok"]
        assert results.count("ok") == k
        admitted = [f"req-{i}" for i, r in enumerate(results) if r == "ok"]

        row = conn.execute(
            "select current_usage, reserved from public.usage_quotas where id = %s", (qid,)
        ).fetchone()
        assert row == (0, D("1.00"))

        def settle(i: int, c: Conn) -> Any:
            row = c.execute(
                "select cost_usd from public.record_usage(organization_id => %s,"
                " request_id => %s, provider => 'openai', model => 'gpt-4o',"
                " input_tokens => %s, output_tokens => 100)",
                (org, admitted[i], 1000 * (i + 1)),
            ).fetchone()
            assert row is not None
            return row[0]

        costs, errors = _run_threads(db_url, settle, n=k)
        assert not errors, errors
    assert monitor.samples > 0
    assert monitor.violations == []
    row = conn.execute(
        "select current_usage, reserved, (select sum(cost_usd) from public.api_usage_logs)"
        " from public.usage_quotas where id = %s",
        (qid,),
    ).fetchone()
    assert row == (sum(costs), 0, sum(costs))
    assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (k,)
    assert conn.execute(
        "select count(*) from public.quota_reservations where status = 'settled'"
    ).fetchone() == (k,)


USERS = ["u0", "u1", "u2", "u3"]
MODELS = ["gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-mini", "o3"]
GPT4O = {"gpt-4o", "gpt-4o-2024-08-06"}


def test_overlapping_quotas_under_64_threads_never_deadlock_and_add_up(
    db_url: str, conn: Conn
) -> None:
    """Org, per-user, per-provider, per-model, tokens and requests quotas all matching the
    same calls: 64 threads reserving and settling (some releasing) in mixed orders finish
    without a deadlock (40P01) and every quota's usage equals the sum of its logged calls."""
    org = _make_org(conn)
    quotas = {
        "org": _add_quota(conn, org, 1000),
        "openai": _add_quota(conn, org, 1000, provider="openai"),
        "gpt4o": _add_quota(conn, org, 1000, model="gpt-4o"),
        "tokens": _add_quota(conn, org, 10**9, metric="tokens"),
        "requests": _add_quota(conn, org, 10**6, metric="requests", quota_type="monthly"),
        **{u: _add_quota(conn, org, 1000, user_id=u) for u in USERS},
        "u0-gpt4o": _add_quota(conn, org, 1000, user_id="u0", model="gpt-4o"),
    }
    calls_per_thread = 4

    def work(i: int, c: Conn) -> list[str]:
        rnd = random.Random(i)
        outcomes = []
        for j in range(calls_per_thread):
            rid = f"t{i}-{j}"
            user = USERS[(i + j) % len(USERS)]
            model = MODELS[rnd.randrange(len(MODELS))]
            c.execute(
                "select * from public.reserve_quota(%s, %s, 'openai', %s, user_id => %s,"
                " input_tokens => 2000, max_output_tokens => 500)",
                (org, rid, model, user),
            )
            if rnd.random() < 0.2:
                c.execute("select public.release_reservation(%s, %s)", (org, rid))
                outcomes.append("released")
                continue
            c.execute(
                "select * from public.record_usage(organization_id => %s, request_id => %s,"
                " provider => 'openai', model => %s, user_id => %s, input_tokens => %s,"
                " output_tokens => %s)",
                (org, rid, model, user, 500 + rnd.randrange(1500), rnd.randrange(500)),
            )
            outcomes.append("recorded")
        return outcomes

    with Monitor(db_url) as monitor:
        results, errors = _run_threads(db_url, work)
    assert [getattr(e, "sqlstate", repr(e)) for e in errors] == []
    assert monitor.violations == []
    recorded = sum(r.count("recorded") for r in results)
    logs = conn.execute(
        "select user_id, model, cost_usd, total_tokens from public.api_usage_logs"
    ).fetchall()
    assert len(logs) == recorded > 0

    def total(pred: Callable[[str, str], bool], what: str = "usd") -> Decimal:
        if what == "requests":
            return D(sum(1 for u, m, _, _ in logs if pred(u, m)))
        idx = 2 if what == "usd" else 3
        return D(sum((row[idx] for row in logs if pred(row[0], row[1])), D(0)))

    expected = {
        "org": total(lambda u, m: True),
        "openai": total(lambda u, m: True),
        "gpt4o": total(lambda u, m: m in GPT4O),
        "tokens": total(lambda u, m: True, "tokens"),
        "requests": total(lambda u, m: True, "requests"),
        **{user: total(lambda u, m, user=user: u == user) for user in USERS},
        "u0-gpt4o": total(lambda u, m: u == "u0" and m in GPT4O),
    }
    rows = {
        qid: (usage, reserved)
        for qid, usage, reserved in conn.execute(
            "select id, current_usage, reserved from public.usage_quotas"
            " where organization_id = %s",
            (org,),
        ).fetchall()
    }
    got = {name: rows[qid] for name, qid in quotas.items()}
    assert got == {name: (usage, 0) for name, usage in expected.items()}
    assert conn.execute(
        "select count(*) from public.quota_reservations where status = 'pending'"
    ).fetchone() == (0,)


@pytest.mark.parametrize("step", ["reserve", "record"])
def test_64_simultaneous_retries_of_one_request_count_once(
    db_url: str, conn: Conn, step: str
) -> None:
    """The same request_id from 64 connections at once (a retry storm) holds one estimate
    and, when recorded, writes one row charged once."""
    org = _make_org(conn)
    qid = _add_quota(conn, org, 100)

    def work(i: int, c: Conn) -> Any:
        if step == "reserve":
            sql = "select status from public.reserve_quota(%s, 'same', 'openai', 'gpt-4o', 0.10)"
        else:
            sql = (
                "select duplicate from public.record_usage(organization_id => %s,"
                " request_id => 'same', provider => 'openai', model => 'gpt-4o',"
                " input_tokens => 1000, output_tokens => 100)"
            )
        row = c.execute(sql, (org,)).fetchone()
        assert row is not None
        return row[0]

    results, errors = _run_threads(db_url, work)
    assert [getattr(e, "sqlstate", repr(e)) for e in errors] == []
    row = conn.execute(
        "select current_usage, reserved from public.usage_quotas where id = %s", (qid,)
    ).fetchone()
    if step == "reserve":
        assert sorted(set(results)) == ["pending", "reserved"]
        assert results.count("reserved") == 1
        assert row == (0, D("0.10"))
        assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (1,)
    else:
        assert results.count(False) == 1 and results.count(True) == THREADS - 1
        assert row == (D("0.0035"), 0)
        assert conn.execute("select count(*) from public.api_usage_logs").fetchone() == (1,)
