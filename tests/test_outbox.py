"""The durable outbox: events the backend could not take are kept on disk, replayed until
acknowledged, recorded once, and picked up by whichever process opens the file next.

Fast: one fresh database per test (``db_url``); "the backend is down" is a real
:class:`PostgresBackend` pointed at a closed port.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from quotaflow import outbox as outbox_mod
from quotaflow.backends import PostgresBackend
from quotaflow.errors import BackendUnavailableError
from quotaflow.models import Usage, UsageEvent
from quotaflow.outbox import Outbox
from quotaflow.providers import ProviderClient
from quotaflow.testing import FakeProviderServer
from quotaflow.tracker import Tracker

from tests.provider_fixtures import API_KEYS, FAST_RETRY, base_urls
from tests.tcp_proxy import TcpProxy

D = Decimal
Conn = psycopg.Connection[Any]

# Nothing listens on port 1: connections are refused at once.
DOWN_URL = "postgresql://postgres@127.0.0.1:1/quotaflow_down?connect_timeout=1"


@pytest.fixture
def backend(db_url: str) -> Iterator[PostgresBackend]:
    b = PostgresBackend(db_url, max_size=4, timeout=5)
    yield b
    b.close()


@pytest.fixture
def proxy(db_url: str) -> Iterator[TcpProxy]:
    """The test database behind a loopback forwarder: ``proxy.url`` can be down, then back."""
    with TcpProxy(db_url) as p:
        yield p


@pytest.fixture
def down() -> Iterator[PostgresBackend]:
    """A backend whose database cannot be reached."""
    b = PostgresBackend(DOWN_URL, max_size=1, timeout=0.3)
    yield b
    b.close()


@pytest.fixture
def org(conn: Conn) -> str:
    row = conn.execute(
        "insert into public.organizations (name) values ('Outbox') returning id"
    ).fetchone()
    assert row is not None
    org_id = str(row[0])
    for metric, limit in (("usd", "1000"), ("tokens", "100000000"), ("requests", "1000000")):
        conn.execute(
            "insert into public.usage_quotas (organization_id, metric, quota_type, quota_limit)"
            " values (%s, %s, 'total', %s)",
            (org_id, metric, D(limit)),
        )
    return org_id


def event(org: str, request_id: str | None = None, **kw: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "organization_id": org,
        "request_id": request_id or f"ob-{uuid.uuid4()}",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "usage": Usage(input_tokens=100, output_tokens=20),
        **kw,
    }
    return UsageEvent(**fields)


def totals(conn: Conn, org: str) -> dict[str, Any]:
    """What a user would look at: log rows, their cost, and each quota's usage and holds."""
    logs = conn.execute(
        "select count(*), count(distinct request_id), coalesce(sum(cost_usd), 0)"
        " from public.api_usage_logs where organization_id = %s",
        (org,),
    ).fetchone()
    quotas = conn.execute(
        "select metric, current_usage, reserved from public.usage_quotas"
        " where organization_id = %s order by metric",
        (org,),
    ).fetchall()
    assert logs is not None
    return {"rows": logs[0], "ids": logs[1], "cost": logs[2], "quotas": quotas}


def assert_consistent(conn: Conn, org: str) -> None:
    """Every quota's usage equals what its logged rows add up to."""
    rows = conn.execute(
        "select q.metric, q.current_usage, coalesce(("
        "  select sum(case q.metric when 'usd' then l.cost_usd"
        "                           when 'tokens' then l.input_tokens + l.output_tokens"
        "                           else 1 end)"
        "  from public.api_usage_logs l where l.organization_id = q.organization_id), 0)"
        " from public.usage_quotas q where q.organization_id = %s",
        (org,),
    ).fetchall()
    for metric, usage, logged in rows:
        assert usage == logged, f"{metric} quota: current_usage {usage} != logged {logged}"


# ---------------------------------------------------------------------------------------
# Storing
# ---------------------------------------------------------------------------------------


def test_put_is_durable_and_once_per_request_id(tmp_path: Path, down: PostgresBackend) -> None:
    """An event is on disk when put returns; the same request_id twice is one event."""
    box = Outbox(down, tmp_path / "outbox.db")
    try:
        e = event(str(uuid.uuid4()))
        box.put(e, "database unavailable")
        box.put(e, "database unavailable")
        box.put(event(e.organization_id))
        assert box.pending() == 2
        # Another reader (another process would do the same) sees the committed rows.
        with sqlite3.connect(tmp_path / "outbox.db") as raw:
            stored = raw.execute("select payload from events order by created_at").fetchall()
            mode = raw.execute("pragma journal_mode").fetchone()
        assert mode == ("wal",)
        assert UsageEvent.model_validate_json(stored[0][0]) == e
    finally:
        box.close(timeout=0)


def test_a_settle_acknowledged_within_the_commit_window_never_reaches_the_disk(
    tmp_path: Path, down: PostgresBackend
) -> None:
    """put_soon queues the event; when its acknowledge follows within the group-commit
    window neither is written. One that waits is committed, then deleted by its ack; one
    deferred stays."""
    path = tmp_path / "outbox.db"
    box = Outbox(down, path)
    try:
        org = str(uuid.uuid4())
        fast, slow, deferred = event(org), event(org), event(org)
        box.put_soon(fast, in_flight=True)
        box.acknowledge(fast)
        box.put_soon(slow, in_flight=True).wait()
        box.put_soon(deferred, in_flight=True).wait()
        with sqlite3.connect(path) as raw:
            on_disk = {r[0] for r in raw.execute("select request_id from events")}
        assert on_disk == {slow.request_id, deferred.request_id}
        box.acknowledge(slow)
        box.defer(deferred, "database unavailable")
    finally:
        box.close(timeout=0)
    with sqlite3.connect(path) as raw:
        rows = raw.execute("select request_id from events").fetchall()
    assert rows == [(deferred.request_id,)]


def test_status_reports_counts_age_and_last_error(tmp_path: Path, down: PostgresBackend) -> None:
    box = Outbox(down, tmp_path / "outbox.db")
    try:
        empty = box.status()
        assert empty["pending"] == 0 and empty["dead"] == 0
        assert empty["oldest_age_seconds"] is None and empty["last_error"] is None
        box.put(event(str(uuid.uuid4())), "database unavailable: connection refused")
        s = box.status()
        assert s["path"] == str(tmp_path / "outbox.db")
        assert s["pending"] == 1 and s["dead"] == 0
        assert s["oldest_age_seconds"] is not None and s["oldest_age_seconds"] >= 0
        assert "connection refused" in s["last_error"]
        json.dumps(s)  # the CLI prints it as JSON
    finally:
        box.close(timeout=0)


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = outbox_mod.REPLAY_POLICY
    first = [policy.backoff(1) for _ in range(200)]
    assert min(first) >= policy.initial_delay * (1 - policy.jitter)
    assert max(first) <= policy.initial_delay * (1 + policy.jitter)
    assert len(set(first)) > 1, "no jitter"
    assert policy.backoff(3) >= policy.initial_delay * 4 * (1 - policy.jitter)
    late = policy.backoff(100)
    assert policy.max_delay * (1 - policy.jitter) <= late <= policy.max_delay * (1 + policy.jitter)


# ---------------------------------------------------------------------------------------
# Draining
# ---------------------------------------------------------------------------------------


def test_flush_records_every_event_once(
    tmp_path: Path, backend: PostgresBackend, conn: Conn, org: str
) -> None:
    box = Outbox(backend, tmp_path / "outbox.db")
    try:
        events = [event(org) for _ in range(25)]
        for e in events:
            box.put(e, "database unavailable")
        assert box.flush(timeout=10)
        assert box.status()["pending"] == 0
        t = totals(conn, org)
        assert t["rows"] == t["ids"] == 25
        assert_consistent(conn, org)
    finally:
        box.close()


def test_flush_gives_up_at_its_timeout_and_keeps_the_events(
    tmp_path: Path, down: PostgresBackend
) -> None:
    box = Outbox(down, tmp_path / "outbox.db")
    try:
        box.put(event(str(uuid.uuid4())), "first failure")
        started = time.monotonic()
        assert box.flush(timeout=1.0) is False
        assert time.monotonic() - started < 5
        s = box.status()
        assert s["pending"] == 1 and s["dead"] == 0
        assert s["max_attempts"] >= 1
        assert "unavailable" in s["last_error"]
    finally:
        box.close(timeout=0)
    again = Outbox(down, tmp_path / "outbox.db")
    assert again.pending() == 1, "events must survive close"
    again.close(timeout=0)


def test_replaying_an_already_recorded_event_charges_nothing(
    tmp_path: Path, backend: PostgresBackend, conn: Conn, org: str
) -> None:
    """A crash between the backend's commit and the outbox's delete replays the event."""
    e = event(org)
    first = backend.record_usage(e)
    before = totals(conn, org)
    box = Outbox(backend, tmp_path / "outbox.db")
    try:
        box.put(e)
        assert box.flush(timeout=10)
        assert box.drain_once(only_due=False) == 0
    finally:
        box.close()
    assert totals(conn, org) == before
    assert before["rows"] == 1 and before["cost"] == first.cost_usd


def test_refused_events_are_dead_lettered_and_the_rest_delivered(
    tmp_path: Path, backend: PostgresBackend, conn: Conn, org: str
) -> None:
    """A permanent refusal (a conflicting replay) is kept for a person to inspect; it does
    not block the events around it, nor is it retried forever. An unknown model's event is
    not refused: it is recorded, unpriced."""
    recorded = event(org)
    backend.record_usage(recorded)
    conflicting = recorded.model_copy(update={"usage": Usage(input_tokens=1, output_tokens=1)})
    unpriced = event(org, model="no-such-model-anywhere")
    good = [event(org) for _ in range(3)]
    box = Outbox(backend, tmp_path / "outbox.db")
    try:
        for e in (good[0], conflicting, good[1], unpriced, good[2]):
            box.put(e)
        assert box.flush(timeout=10)
        s = box.status()
        assert s["pending"] == 0 and s["dead"] == 1
        assert "Idempotency" in s["last_error"]
        # Dead events stay dead: a later drain does not resend them.
        assert box.drain_once(only_due=False) == 0
    finally:
        box.close()
    t = totals(conn, org)
    assert t["rows"] == 5
    assert conn.execute(
        "select unpriced from public.api_usage_logs where request_id = %s", (unpriced.request_id,)
    ).fetchone() == (True,)
    assert_consistent(conn, org)
    with sqlite3.connect(tmp_path / "outbox.db") as raw:
        dead = {r[0] for r in raw.execute("select request_id from events where dead = 1")}
    assert dead == {recorded.request_id}


def test_a_new_outbox_picks_up_what_another_left(
    tmp_path: Path, proxy: TcpProxy, conn: Conn, org: str
) -> None:
    """Events kept while their database was away are delivered by the next outbox for it."""
    path = tmp_path / "outbox.db"
    proxy.down()
    away = PostgresBackend(proxy.url, max_size=1, timeout=0.3)
    first = Outbox(away, path)
    for e in [event(org) for _ in range(10)]:
        first.put(e, "database unavailable")
    assert first.close(timeout=0.5) is False
    away.close()
    proxy.up()
    back = PostgresBackend(proxy.url, max_size=2)
    second = Outbox(back, path)
    try:
        assert second.pending() == 10
        assert second.flush(timeout=10)
    finally:
        second.close()
        back.close()
    t = totals(conn, org)
    assert t["rows"] == t["ids"] == 10
    assert_consistent(conn, org)


def test_two_outboxes_draining_one_file_record_each_event_once(
    tmp_path: Path, proxy: TcpProxy, conn: Conn, org: str
) -> None:
    """An app and `quotaflow outbox flush` (or two app processes) may drain at once."""
    path = tmp_path / "outbox.db"
    proxy.down()
    seed = Outbox(PostgresBackend(proxy.url, max_size=1, timeout=0.2), path)
    for _ in range(300):
        seed.put(event(org))
    seed.close(timeout=0)
    seed.backend.close()
    proxy.up()
    backends = [PostgresBackend(proxy.url, max_size=2) for _ in range(2)]
    boxes = [Outbox(b, path) for b in backends]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda b=b: results.append(b.flush(20))) for b in boxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for b, be in zip(boxes, backends, strict=True):
        b.close()
        be.close()
    assert results == [True, True]
    t = totals(conn, org)
    assert t["rows"] == t["ids"] == 300
    assert_consistent(conn, org)


def test_two_trackers_on_two_databases_sharing_one_outbox_never_mix(
    tmp_path: Path, db_url: str, second_db_url: str, conn: Conn
) -> None:
    """Events deferred for database A stay A's: a tracker, a flush or the replayer on B
    never delivers them; `outbox status` counts them per database; A's own outbox does."""
    path = tmp_path / "shared.sqlite3"
    org = "0000000a-0000-4000-8000-0000000000aa"
    for url in (db_url, second_db_url):
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("insert into public.organizations (id, name) values (%s, 'Both')", (org,))
    with TcpProxy(db_url) as a_proxy:
        a = Tracker(PostgresBackend(a_proxy.url, max_size=1), outbox=path)
        a.check_quota(org, "openai", "gpt-4o-mini", "0")  # A is known by its system id now
        a_proxy.down()
        raw = {"usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}
        deferred = [
            a.track_usage({"organization_id": org}, "openai", "gpt-4o-mini", raw) for _ in range(3)
        ]
        assert all(r.deferred for r in deferred)
        a.close(timeout=0)
        a_proxy.up()

        b = Tracker(PostgresBackend(second_db_url, max_size=1), outbox=path)
        b.track_usage({"organization_id": org}, "openai", "gpt-4o-mini", raw)
        assert b.flush(timeout=2)
        b.close(timeout=1)
        cli = run_cli(["outbox", "flush", "--path", str(path), "--database-url", second_db_url])
        assert "3 event(s) for other databases left alone" in cli.stdout
        with psycopg.connect(second_db_url) as c:
            assert c.execute("select count(*) from public.api_usage_logs").fetchone() == (1,)

        status = json.loads(run_cli(["outbox", "status", "--path", str(path), "--json"]).stdout)
        assert status["pending"] == 3
        (a_target,) = status["targets"]
        assert a_target["pending"] == 3 and a_target["target"].startswith("pg:")
        assert a_target["target"].endswith(
            "/" + psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        )

        again = Tracker(PostgresBackend(db_url, max_size=1), outbox=path)
        assert again.flush(timeout=10)  # another URL of A: known by its system id
        again.close()
    ids = {r.request_id for r in deferred}
    logged = conn.execute("select request_id from public.api_usage_logs").fetchall()
    assert {r[0] for r in logged} == ids


def run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def test_background_replayer_delivers_without_flush(
    tmp_path: Path, backend: PostgresBackend, conn: Conn, org: str
) -> None:
    box = Outbox(backend, tmp_path / "outbox.db")
    try:
        box.put(event(org), "database unavailable")  # starts the replayer
        deadline = time.monotonic() + 10
        while box.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.pending() == 0
    finally:
        box.close()
    assert totals(conn, org)["rows"] == 1


def test_close_stops_the_replayer_thread(tmp_path: Path, down: PostgresBackend) -> None:
    before = {t.ident for t in threading.enumerate()}
    box = Outbox(down, tmp_path / "outbox.db")
    box.put(event(str(uuid.uuid4())))
    assert any(t.name == "quotaflow-outbox" for t in threading.enumerate())
    box.close(timeout=0)
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not [t for t in left if t.name == "quotaflow-outbox"]


# ---------------------------------------------------------------------------------------
# Through the Tracker
# ---------------------------------------------------------------------------------------


def test_tracker_defers_to_the_outbox_and_a_new_tracker_drains_it(
    tmp_path: Path, proxy: TcpProxy, conn: Conn, org: str
) -> None:
    """Settle while the database is away: the record says deferred, nothing is lost, and
    the next Tracker on the same outbox file replays it without being asked."""
    path = tmp_path / "outbox.db"
    raw = {"usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}
    proxy.down()
    away = Tracker(PostgresBackend(proxy.url, max_size=1, timeout=0.3), outbox=path)
    records = [
        away.track_usage({"organization_id": org}, "openai", "gpt-4o-mini", raw) for _ in range(5)
    ]
    assert all(r.deferred and r.log_id is None and r.cost is None for r in records)
    away.close(timeout=0.5)
    assert totals(conn, org)["rows"] == 0

    proxy.up()
    back = Tracker(PostgresBackend(proxy.url, max_size=2), outbox=path)
    try:
        deadline = time.monotonic() + 10
        while totals(conn, org)["rows"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert back.flush(timeout=10)
    finally:
        back.close()
    t = totals(conn, org)
    assert t["rows"] == t["ids"] == 5
    assert {r.request_id for r in records} == {
        r[0]
        for r in conn.execute(
            "select request_id from public.api_usage_logs where organization_id = %s", (org,)
        )
    }
    assert_consistent(conn, org)


def test_fail_open_calls_the_provider_and_records_through_the_outbox(
    tmp_path: Path, proxy: TcpProxy, conn: Conn, org: str
) -> None:
    """fail_open=True: with the database away the call still runs, unreserved; its usage
    is recorded once the outbox drains. The default (fail closed) refuses the call."""
    path = tmp_path / "outbox.db"
    request = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with FakeProviderServer(usage=Usage(input_tokens=30, output_tokens=4)) as fake:
        providers = ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY)
        proxy.down()
        closed = Tracker(
            PostgresBackend(proxy.url, max_size=1, timeout=0.3), providers=providers, outbox=path
        )
        with pytest.raises(BackendUnavailableError):
            closed.execute_with_tracking(request, {"organization_id": org})
        closed.close(timeout=0)
        assert fake.request_count() == 0, "fail closed must not call the provider"

        opened = Tracker(
            PostgresBackend(proxy.url, max_size=1, timeout=0.3),
            providers=providers,
            outbox=path,
            fail_open=True,
        )
        response = opened.execute_with_tracking(request, {"organization_id": org})
        opened.close(timeout=0)
        providers.close()
        assert fake.request_count() == 1
    assert response.content and response.deferred and response.log_id is None

    proxy.up()
    back = Tracker(PostgresBackend(proxy.url, max_size=2), outbox=path)
    try:
        assert back.flush(timeout=10)
    finally:
        back.close()
    assert logged_rows(conn, org) == [(response.request_id, 30, 4, True)]
    assert_consistent(conn, org)


def logged_rows(conn: Conn, org: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select request_id, input_tokens, output_tokens, success from public.api_usage_logs"
        " where organization_id = %s order by request_id",
        (org,),
    ).fetchall()


def test_a_settle_failing_on_a_transient_database_error_is_not_lost(
    tmp_path: Path, db_url: str, conn: Conn, org: str
) -> None:
    """The database is up but the settle keeps failing (here: serialization failures, as on
    a hot standby or under SERIALIZABLE) past the backend's retries: the provider was already
    called, so the usage goes to the outbox and is recorded once the database recovers."""
    conn.execute("create sequence public.injected_failures")
    conn.execute(
        "create function public.inject_failure() returns trigger language plpgsql as $$"
        " begin"
        "   if nextval('public.injected_failures') <= 3 then"
        "     raise exception 'injected serialization failure' using errcode = '40001';"
        "   end if;"
        "   return new;"
        " end $$"
    )
    conn.execute(
        "create trigger inject_failure before insert on public.api_usage_logs"
        " for each row execute function public.inject_failure()"
    )
    raw = {"usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}
    tracker = Tracker(PostgresBackend(db_url, max_size=2), outbox=tmp_path / "outbox.db")
    try:
        record = tracker.track_usage({"organization_id": org}, "openai", "gpt-4o-mini", raw)
        assert record.deferred
        assert tracker.flush(timeout=10)
    finally:
        tracker.close()
    assert logged_rows(conn, org) == [(record.request_id, 50, 5, True)]
    assert_consistent(conn, org)


def test_tracker_without_outbox_raises_instead(tmp_path: Path) -> None:
    t = Tracker(PostgresBackend(DOWN_URL, max_size=1, timeout=0.3), outbox=False)
    try:
        with pytest.raises(BackendUnavailableError):
            t.track_usage(
                {"organization_id": str(uuid.uuid4())},
                "openai",
                "gpt-4o-mini",
                {"usage": {"prompt_tokens": 1, "completion_tokens": 1}},
            )
    finally:
        t.close()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# CLI: quotaflow outbox status / flush
# ---------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quotaflow.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_cli_outbox_status_and_flush(
    tmp_path: Path, proxy: TcpProxy, conn: Conn, org: str
) -> None:
    """`quotaflow outbox status` shows what waits; `flush` delivers it, or exits 1 saying
    how many events are left when the database is still away."""
    path = tmp_path / "outbox.db"
    proxy.down()
    down = PostgresBackend(proxy.url, max_size=1, timeout=0.3)
    box = Outbox(down, path)
    for _ in range(3):
        box.put(event(org), "database unavailable: connection refused")
    box.close(timeout=0)
    down.close()
    env = {"QUOTAFLOW_OUTBOX_PATH": str(path), "QUOTAFLOW_DATABASE_URL": proxy.url}

    status = _cli("outbox", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["pending"], shown["dead"], shown["path"]) == (3, 0, str(path))
    assert "unavailable" in shown["last_error"]

    away = _cli("outbox", "flush", "--timeout", "1", env=env)
    assert away.returncode == 1
    assert "3 event(s)" in away.stderr + away.stdout
    assert totals(conn, org)["rows"] == 0

    proxy.up()
    flushed = _cli("outbox", "flush", env=env)
    assert flushed.returncode == 0, flushed.stderr
    assert "delivered 3" in flushed.stdout
    assert totals(conn, org)["rows"] == 3
    after = json.loads(_cli("outbox", "status", "--json", env=env).stdout)
    assert (after["pending"], after["dead"]) == (0, 0)


def test_concurrent_first_deferrals_share_one_outbox(tmp_path: Path) -> None:
    """16 threads whose settles fail at the same moment create one outbox and one replayer;
    close() leaves no replayer thread behind."""
    before = {t.ident for t in threading.enumerate()}
    tracker = Tracker(
        PostgresBackend(DOWN_URL, max_size=1, timeout=0.3), outbox=tmp_path / "outbox.db"
    )
    barrier = threading.Barrier(16)
    org = str(uuid.uuid4())
    raw = {"usage": {"prompt_tokens": 5, "completion_tokens": 1}}

    def settle() -> None:
        barrier.wait(timeout=10)
        tracker.track_usage({"organization_id": org}, "openai", "gpt-4o-mini", raw)

    threads = [threading.Thread(target=settle) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    tracker.close(timeout=0)
    time.sleep(0.2)
    replayers = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.name == "quotaflow-outbox" and t.is_alive()
    ]
    assert not replayers, f"{len(replayers)} replayer thread(s) left running after close()"
    box = Outbox(PostgresBackend(DOWN_URL, max_size=1, timeout=0.3), tmp_path / "outbox.db")
    assert box.pending() == 16
    box.close(timeout=0)
    box.backend.close()
