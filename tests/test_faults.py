"""Nothing lost, nothing doubled: tracked calls under injected faults (issue 5).

* The fault run: 16 threads make 2,000 tracked calls against the fake provider while the
  database connections are terminated every 50-100 ms and PostgreSQL is stopped and
  restarted once. Afterwards every call that reached the provider has exactly one log row
  and every quota's usage is the sum of its logged costs.
* A tracking process is killed with SIGKILL with events in its outbox; a new process drains
  them. The crashed process's reservations expire by themselves; the late settles still
  charge once.
* Every settle event replayed 3x, shuffled, concurrently, through the batch and the single
  settle, gives the same totals as settling each once.
* A soak of mixed load with connection terminations grows no connections, threads or memory.

The fault and crash tests stop PostgreSQL, so they run their own server (initdb + pg_ctl
into a temporary directory, PostgreSQL 15 binaries from ``QUOTAFLOW_PG_BIN`` or
``/usr/lib/postgresql/15/bin``), never the shared one. Sizes scale down with
``QUOTAFLOW_FAULT_CALLS`` and ``QUOTAFLOW_SOAK_SECONDS``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from quotaflow.backends import PostgresBackend
from quotaflow.errors import BackendUnavailableError, ProviderError, QuotaflowError
from quotaflow.models import AIModelRequest, Usage, UsageEvent
from quotaflow.outbox import Outbox
from quotaflow.providers import ProviderClient
from quotaflow.testing import FakeProviderServer
from quotaflow.tracker import Tracker

from tests.db import MIGRATIONS_DIR, load_bootstrap, load_sql_files, sql_files
from tests.provider_fixtures import API_KEYS, FAST_RETRY, base_urls

D = Decimal
Conn = psycopg.Connection[Any]

FAULT_CALLS = int(os.environ.get("QUOTAFLOW_FAULT_CALLS", "2000"))
FAULT_THREADS = 16
SOAK_SECONDS = float(os.environ.get("QUOTAFLOW_SOAK_SECONDS", "30"))
PG_BIN = Path(os.environ.get("QUOTAFLOW_PG_BIN", "/usr/lib/postgresql/15/bin"))

# What the fake provider reports for every call (small, so quotas never refuse).
USAGE = Usage(input_tokens=40, output_tokens=12)

# (provider, api, model): every adapter, each with a price in the catalogue.
KINDS = [
    ("openai", "chat", "gpt-4o-mini"),
    ("anthropic", "chat", "claude-sonnet-4-5"),
    ("google", "chat", "gemini-2.5-flash"),
    ("xai", "chat", "grok-4"),
    ("openai", "responses", "gpt-4o-mini"),
]


# ---------------------------------------------------------------------------------------
# A private PostgreSQL server this module may stop and start
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A throwaway cluster (initdb) on a free loopback port, started and stopped with
    pg_ctl. As root the server runs as ``postgres`` (initdb refuses root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="quotaflow-faults-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._pg(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        self.running = False

    def _pg(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(PG_BIN / tool), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options,
            "-w", "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN} (set QUOTAFLOW_PG_BIN)")
    server = PrivatePostgres()
    try:
        server.start()
        template = server.url("qf_template")
        with psycopg.connect(server.url(), autocommit=True) as c:
            c.execute("create database qf_template")
        load_bootstrap(template, server.url())
        load_sql_files(template, sql_files(MIGRATIONS_DIR))
        yield server
    finally:
        server.destroy()


_private_numbers = itertools.count(1)


@pytest.fixture
def private_db(private_pg: PrivatePostgres) -> Iterator[str]:
    """A fresh database (bootstrap + migrations) on the private server."""
    private_pg.ensure_running()
    name = f"qf_{next(_private_numbers)}"
    with psycopg.connect(private_pg.url(), autocommit=True) as c:
        c.execute(f"create database {name} template qf_template")
    yield private_pg.url(name)
    private_pg.ensure_running()
    with psycopg.connect(private_pg.url(), autocommit=True) as c:
        c.execute(f"drop database if exists {name} with (force)")


# ---------------------------------------------------------------------------------------
# Shared helpers: organization, tagged requests, totals
# ---------------------------------------------------------------------------------------


def _connect(url: str) -> Conn:
    return psycopg.connect(url, autocommit=True)


def make_org(url: str, name: str = "Faults") -> str:
    """An organization with a big org-wide USD, tokens and requests quota (all 'total', so
    no window rolls over mid-test): every call reserves on all three."""
    with _connect(url) as c:
        row = c.execute(
            "insert into public.organizations (name) values (%s) returning id", (name,)
        ).fetchone()
        assert row is not None
        org = str(row[0])
        for metric, limit in (("usd", "100000"), ("tokens", "1000000000"), ("requests", "1e9")):
            c.execute(
                "insert into public.usage_quotas (organization_id, name, metric, quota_type,"
                " quota_limit) values (%s, %s, %s, 'total', %s)",
                (org, f"all {metric}", metric, D(limit)),
            )
    return org


def tagged_request(i: int, rid: str, *, stream: bool = False) -> AIModelRequest:
    """A small request carrying its tracker request_id in the body, so the fake provider's
    log tells which calls reached it (adapter retries resend the same tag)."""
    provider, api, model = KINDS[i % len(KINDS)]
    return AIModelRequest(
        provider=provider,  # type: ignore[arg-type]
        api=api,  # type: ignore[arg-type]
        model=model,
        messages=[{"role": "user", "content": f"Call {i}: say something short."}],  # type: ignore[list-item]
        max_tokens=16,
        stream=stream,
        extra={"metadata": {"qf_request_id": rid}},
    )


def provider_tags(fake: FakeProviderServer) -> set[str]:
    tags = set()
    for r in fake.requests:
        meta = r.body.get("metadata") if isinstance(r.body, dict) else None
        if isinstance(meta, dict) and meta.get("qf_request_id"):
            tags.add(str(meta["qf_request_id"]))
    return tags


def make_tracker(
    url: str, fake: FakeProviderServer, outbox: Path, app: str, **kw: Any
) -> tuple[Tracker, ProviderClient]:
    providers = ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY)
    backend = PostgresBackend(
        f"{url}?application_name={app}",
        max_size=kw.pop("max_size", 8),
        timeout=kw.pop("timeout", 2.0),
    )
    return Tracker(backend, providers=providers, outbox=outbox, **kw), providers


def logged_ids(conn: Conn, org: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select request_id from public.api_usage_logs where organization_id = %s", (org,)
        )
    ]


_METRIC_SQL = "case q.metric when 'usd' then {cost} when 'tokens' then {tokens} else 1 end"


def quota_report(conn: Conn, org: str) -> list[tuple[Any, ...]]:
    """Per quota: name, current_usage, what its logged rows add up to, reserved, and what
    its pending reservations hold."""
    logged = _METRIC_SQL.format(cost="l.cost_usd", tokens="l.input_tokens + l.output_tokens")
    held = _METRIC_SQL.format(cost="r.estimated_cost", tokens="r.estimated_tokens")
    return conn.execute(
        f"select q.name, q.current_usage,"
        f" coalesce((select sum({logged}) from public.api_usage_logs l"
        f"           where l.organization_id = q.organization_id), 0),"
        f" q.reserved,"
        f" coalesce((select sum({held}) from public.quota_reservations r"
        f"           where r.status = 'pending' and q.id = any (r.quota_ids)), 0)"
        f" from public.usage_quotas q where q.organization_id = %s order by q.name",
        (org,),
    ).fetchall()


def assert_totals(conn: Conn, org: str, expected_ids: set[str]) -> None:
    """Log rows == the calls that reached the provider, once each; every quota's usage ==
    the sum of its logged costs; holds == pending reservations, and none once they expire."""
    ids = logged_ids(conn, org)
    dupes = [rid for rid, n in Counter(ids).items() if n > 1]
    assert not dupes, f"request_ids logged twice: {dupes[:5]}"
    assert len(ids) == len(expected_ids)
    missing, extra = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing, f"{len(missing)} calls reached the provider but were not logged"
    assert not extra, f"{len(extra)} logged calls never reached the provider"
    for name, usage, logged, reserved, held in quota_report(conn, org):
        assert usage == logged, f"{name}: current_usage {usage} != logged {logged}"
        assert reserved == held, f"{name}: reserved {reserved} != pending holds {held}"
    # Whatever is still held (calls refused after their reserve committed) expires.
    conn.execute(
        "update public.quota_reservations set expires_at = now() - interval '1 second'"
        " where organization_id = %s and status = 'pending'",
        (org,),
    )
    conn.execute("select public.expire_reservations(%s)", (org,))
    for name, usage, logged, reserved, _ in quota_report(conn, org):
        assert reserved == 0, f"{name}: {reserved} still reserved after expiry"
        assert usage == logged


def terminate(conn: Conn, app: str) -> int:
    """pg_terminate_backend on every server process of the application ``app``."""
    row = conn.execute(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
        " where application_name = %s and pid <> pg_backend_pid()",
        (app,),
    ).fetchone()
    return int(row[0]) if row else 0


class Chaos(threading.Thread):
    """Terminates ``app``'s connections every 50-100 ms (reconnecting through restarts) and
    runs ``once`` (e.g. a server restart) when ``when()`` first becomes true."""

    def __init__(
        self,
        admin_url: str,
        app: str,
        *,
        interval: tuple[float, float] = (0.05, 0.1),
        when: Callable[[], bool] | None = None,
        once: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.admin_url, self.app, self.interval = admin_url, app, interval
        self.when, self.once = when, once
        self.done = threading.Event()
        self.terminated = 0
        self.restarts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn: Conn | None = None
        try:
            while not self.done.wait(random.uniform(*self.interval)):
                if self.once is not None and self.when is not None and self.when():
                    once, self.once = self.once, None
                    if conn is not None:
                        conn.close()
                        conn = None
                    once()
                    self.restarts += 1
                    continue
                try:
                    conn = conn or _connect(self.admin_url)
                    self.terminated += terminate(conn, self.app)
                except psycopg.OperationalError:
                    if conn is not None:
                        conn.close()
                    conn = None
        except BaseException as exc:
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=120)
        assert not self.is_alive(), "chaos thread hung"
        if self.error is not None:
            raise self.error


# ---------------------------------------------------------------------------------------
# 1. The fault run
# ---------------------------------------------------------------------------------------


def _one_call(tracker: Tracker, fake: FakeProviderServer, i: int, org: str) -> tuple[str, str]:
    """One tracked call of a mixed workload; returns (request_id, outcome)."""
    rid = f"fault-{i}-{uuid.uuid4().hex[:8]}"
    if i % 50 == 10:
        fake.fail_next(400)  # a refusal: a failure row (for whichever call takes it)
    elif i % 50 == 35:
        fake.fail_next(503, retry_after="0")  # retried inside the adapter
    stream = i % 7 == 3
    try:
        result = tracker.execute_with_tracking(
            tagged_request(i, rid, stream=stream), {"organization_id": org, "request_id": rid}
        )
        if stream:
            for n, _ in enumerate(result):
                if i % 14 == 3 and n == 0:
                    break  # abandoned early: settles with estimated usage
            result.close()
            result = result.response
        return rid, "deferred" if result.log_id is None else "recorded"
    except BackendUnavailableError:
        return rid, "refused"
    except ProviderError:
        return rid, "provider_error"


def test_fault_run_records_every_call_that_reached_the_provider_once(
    private_pg: PrivatePostgres, private_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 calls, 16 threads, connections terminated every 50-100 ms, one server restart:
    after flush, log rows == calls that reached the provider, no duplicates, quotas exact."""
    caplog.set_level(logging.ERROR, logger="psycopg")  # thousands of "discarding closed ..."
    org = make_org(private_db)
    # Earlier tests' trackers may still own replayers; only this run's count.
    earlier = {t for t in threading.enumerate() if t.name == "quotaflow-outbox"}
    started = time.monotonic()
    outcomes: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = itertools.count()
    finished = itertools.count(1)
    progress = [0]

    restarted = threading.Event()

    def restart() -> None:
        private_pg.stop("immediate")  # a crash: no shutdown checkpoint, sessions just die
        time.sleep(2.5)
        private_pg.start()
        restarted.set()

    with FakeProviderServer(usage=USAGE, latency=0.005) as fake:
        tracker, providers = make_tracker(private_db, fake, tmp_path / "outbox.db", "qf-fault")

        def worker() -> None:
            while (i := next(counter)) < FAULT_CALLS:
                if i >= 2 * FAULT_CALLS // 3:
                    restarted.wait(timeout=60)  # (small runs) keep the last third for after it
                try:
                    rid, outcome = _one_call(tracker, fake, i, org)
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    continue
                with lock:
                    outcomes[rid] = outcome
                progress[0] = next(finished)

        chaos = Chaos(
            private_pg.url(),
            "qf-fault",
            when=lambda: progress[0] >= FAULT_CALLS // 3,
            once=restart,
        )
        chaos.start()
        threads = [threading.Thread(target=worker) for _ in range(FAULT_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        assert not any(t.is_alive() for t in threads), "tracked calls hung"
        chaos.stop()
        calls_done = time.monotonic()

        assert not errors, f"unexpected errors: {errors[:3]!r}"
        assert tracker.flush(timeout=60), "the outbox did not drain"
        status = tracker._get_outbox().status()
        tracker.close()
        providers.close()
        reached = provider_tags(fake)
    replayers = [
        t for t in threading.enumerate() if t.name == "quotaflow-outbox" and t not in earlier
    ]
    assert not replayers, "close() left outbox replayer threads running"

    counts = Counter(outcomes.values())
    print(
        f"\nfault run: {FAULT_CALLS} calls in {calls_done - started:.1f}s, flushed in"
        f" {time.monotonic() - calls_done:.1f}s; outcomes {dict(counts)};"
        f" {chaos.terminated} connections terminated, {chaos.restarts} restart(s)"
    )
    assert len(outcomes) == FAULT_CALLS
    assert chaos.restarts == 1 and chaos.terminated > 0
    assert status["pending"] == 0 and status["dead"] == 0, status
    refused = {rid for rid, o in outcomes.items() if o == "refused"}
    assert not refused & reached, "a refused call reached the provider (fail closed broken)"
    assert reached == set(outcomes) - refused, "a call that was not refused never ran"
    with _connect(private_db) as conn:
        assert_totals(conn, org, reached)


# ---------------------------------------------------------------------------------------
# 2. kill -9 with events in the outbox; a new process drains them
# ---------------------------------------------------------------------------------------

CHILD = r"""
import json, sys, threading, time
from quotaflow.backends import PostgresBackend
from quotaflow.providers import ProviderClient
from quotaflow.tracker import Tracker

a = json.loads(sys.argv[1])
tracker = Tracker(
    PostgresBackend(a["db_url"] + "?application_name=qf-crash", max_size=a["n"], timeout=1.0),
    providers=ProviderClient(api_keys=a["keys"], base_urls=a["urls"]),
    outbox=a["outbox"],
    reservation_ttl=a["ttl"],
)
deferred = []

def call(i):
    rid = f"crash-{i}"
    provider, api, model = a["kinds"][i % len(a["kinds"])]
    response = tracker.execute_with_tracking(
        {"provider": provider, "api": api, "model": model, "max_tokens": 16,
         "messages": [{"role": "user", "content": f"call {i}"}],
         "extra": {"metadata": {"qf_request_id": rid}}},
        {"organization_id": a["org"], "request_id": rid},
    )
    deferred.append(response.log_id is None)

threads = [threading.Thread(target=call, args=(i,)) for i in range(a["n"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"deferred": sum(deferred), "pending": tracker._get_outbox().pending()}),
      flush=True)
time.sleep(600)  # killed here, with its outbox full
"""

DRAIN = r"""
import json, sys
from quotaflow.tracker import Tracker
a = json.loads(sys.argv[1])
tracker = Tracker(database_url=a["db_url"], outbox=a["outbox"])
ok = tracker.flush(timeout=30)
tracker.close()
print(json.dumps({"flushed": ok}), flush=True)
"""


def _pending_reservations(url: str, org: str) -> int:
    with _connect(url) as c:
        row = c.execute(
            "select count(*) from public.quota_reservations"
            " where organization_id = %s and status = 'pending'",
            (org,),
        ).fetchone()
    return int(row[0]) if row else 0


def test_kill_9_with_a_full_outbox_then_a_new_process_drains_it(
    private_pg: PrivatePostgres, private_db: str, tmp_path: Path
) -> None:
    """Reserve, database gone before the settles (they land in the outbox), SIGKILL; the
    held quota frees itself at the TTL; a new process replays the usage, charged once."""
    n, ttl = 12, 2
    org = make_org(private_db, "Crash")
    outbox = tmp_path / "outbox.db"
    with FakeProviderServer(usage=USAGE, latency=3.0) as fake:
        args = {
            "db_url": private_db, "org": org, "n": n, "ttl": ttl, "outbox": str(outbox),
            "keys": API_KEYS, "urls": base_urls(fake), "kinds": KINDS,
        }  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while _pending_reservations(private_db, org) < n:
                assert child.poll() is None, child.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the child never reserved"
                time.sleep(0.05)
            reserved_at = time.monotonic()
            # Every call holds its reservation and waits for the provider: database gone.
            private_pg.stop("fast")
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, child.communicate(timeout=5)[1][-3000:]
            report = json.loads(line)
            assert report == {"deferred": n, "pending": n}
            os.kill(child.pid, signal.SIGKILL)
            assert child.wait(timeout=10) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
            if child.stderr is not None:
                child.stderr.close()
        reached = provider_tags(fake)
    assert reached == {f"crash-{i}" for i in range(n)}

    # What the killed process left: n events on disk, none lost to the kill.
    with sqlite3.connect(outbox) as raw:
        assert raw.execute("select count(*) from events where dead = 0").fetchone() == (n,)

    # Crash between reserve and settle: the holds expire after the TTL, freeing the quota.
    private_pg.start()
    time.sleep(max(0.0, reserved_at + ttl + 0.5 - time.monotonic()))
    with _connect(private_db) as conn:
        expired = conn.execute("select public.expire_reservations(%s)", (org,)).fetchone()
        assert expired == (n,)
        for name, usage, _, reserved, _ in quota_report(conn, org):
            assert (usage, reserved) == (0, 0), name

    drained = subprocess.run(
        [sys.executable, "-c", DRAIN, json.dumps({"db_url": private_db, "outbox": str(outbox)})],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert json.loads(drained.stdout) == {"flushed": True}
    with sqlite3.connect(outbox) as raw:
        assert raw.execute("select count(*) from events").fetchone() == (0,)
    with _connect(private_db) as conn:
        assert_totals(conn, org, reached)
        linked = conn.execute(
            "select count(*) from public.api_usage_logs l join public.quota_reservations r"
            " on r.id = l.reservation_id where l.organization_id = %s",
            (org,),
        ).fetchone()
        assert linked == (n,), "late settles must still point at their (expired) reservations"


# ---------------------------------------------------------------------------------------
# 2b. SIGKILL at random instants of 200 calls, the database down and restarted meanwhile
# ---------------------------------------------------------------------------------------

WORKER = r"""
import json, queue, sys, threading
from quotaflow.backends import PostgresBackend
from quotaflow.errors import BackendUnavailableError, QuotaflowError
from quotaflow.providers import ProviderClient, RetryPolicy
from quotaflow.tracker import Tracker

a = json.loads(sys.argv[1])
tracker = Tracker(
    PostgresBackend(a["db_url"], max_size=4, timeout=1.0, connect_timeout=1.0),
    providers=ProviderClient(api_keys=a["keys"], base_urls=a["urls"],
                             retry=RetryPolicy(max_attempts=1)),
    outbox=a["outbox"],
)
todo = queue.Queue()
for i in a["indices"]:
    todo.put(i)
lock = threading.Lock()

def work():
    while True:
        try:
            i = todo.get_nowait()
        except queue.Empty:
            return
        with lock:
            print(i, flush=True)  # started: the next process never repeats it
        provider, api, model = a["kinds"][i % len(a["kinds"])]
        rid = f"kill-{i}"
        try:
            tracker.execute_with_tracking(
                {"provider": provider, "api": api, "model": model, "max_tokens": 16,
                 "messages": [{"role": "user", "content": f"call {i}"}],
                 "extra": {"metadata": {"qf_request_id": rid}}},
                {"organization_id": a["org"], "request_id": rid},
            )
        except BackendUnavailableError:
            pass  # refused at reserve (fail closed): never sent
        except QuotaflowError as exc:
            print(f"error {i} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("done", flush=True)
threading.Event().wait(600)  # killed here at the latest
"""

IN_TRANSIT = 0.05
"""Seconds before a kill in which an answer may have left the fake provider without having
reached the tracker (and every answer written after the kill, to a process already gone): no
code of the client can keep what it never received."""


def test_sigkill_at_random_instants_with_the_database_down_and_back_loses_no_answered_call(
    private_pg: PrivatePostgres, private_db: str, tmp_path: Path
) -> None:
    """200 calls from processes killed (SIGKILL) at random instants, while the database is
    stopped and restarted under them; a successor drains the outbox. Every call whose answer
    the tracker could have received is logged exactly once; the quotas equal the logged
    costs. Only an answer still on the wire at a kill may be missing (it never arrived)."""
    rng = random.Random(int(os.environ.get("QUOTAFLOW_FAULT_SEED", "20261202")))
    org = make_org(private_db, "Sigkill")
    outbox = tmp_path / "outbox.db"
    remaining = list(range(200))
    kills: list[float] = []
    rounds = outages = 0
    with FakeProviderServer(usage=USAGE, latency=0.05) as fake:
        while remaining:
            rounds += 1
            assert rounds <= 40, "the workers make no progress"
            args = {
                "db_url": private_db, "org": org, "outbox": str(outbox), "indices": remaining,
                "keys": API_KEYS, "urls": base_urls(fake), "kinds": KINDS,
            }  # fmt: skip
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER, json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started_at = time.monotonic()
            life = rng.uniform(0.4, 1.5)
            outage = private_pg.running and rounds > 1 and rng.random() < 0.4
            try:
                if outage:  # the database goes away mid-round, and comes back in the next
                    outages += 1
                    time.sleep(rng.uniform(0.2, life))
                    private_pg.stop(rng.choice(["fast", "immediate"]))
                time.sleep(max(0.0, started_at + life - time.monotonic()))
                kills.append(time.monotonic())
                os.kill(worker.pid, signal.SIGKILL)
                out, err = worker.communicate(timeout=30)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            assert "Traceback" not in err, err[-3000:]
            started = {int(line) for line in out.split() if line.isdigit()}
            remaining = [i for i in remaining if i not in started]
            if not private_pg.running and (rng.random() < 0.5 or not remaining):
                private_pg.start()
        private_pg.ensure_running()
        answered = {
            str(r.body["metadata"]["qf_request_id"]): (r.received_at, r.answered_at)
            for r in fake.requests
            if r.answered_at is not None and isinstance(r.body, dict)
        }

    def on_the_wire_at_a_kill(received: float, answered_at: float) -> bool:
        # The kill of the process that sent it came before its answer could be read.
        kill = next(k for k in kills if k >= received)
        return answered_at > kill - IN_TRANSIT

    with sqlite3.connect(outbox) as raw:
        left = raw.execute("select count(*) from events").fetchone()[0]
    drained = subprocess.run(
        [sys.executable, "-c", DRAIN, json.dumps({"db_url": private_db, "outbox": str(outbox)})],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert drained.returncode == 0, drained.stderr[-3000:]
    assert json.loads(drained.stdout) == {"flushed": True}
    with sqlite3.connect(outbox) as raw:
        kept = raw.execute("select target, request_id, dead, last_error from events").fetchall()
        assert kept == [], kept[:5]

    with _connect(private_db) as conn:
        ids = logged_ids(conn, org)
        assert not [rid for rid, n in Counter(ids).items() if n > 1], "a call logged twice"
        assert set(ids) <= set(answered), "a logged call the provider never answered"
        lost = set(answered) - set(ids)
        on_the_wire = {rid for rid in lost if on_the_wire_at_a_kill(*answered[rid])}
        after_kill = {
            rid
            for rid in on_the_wire
            if answered[rid][1] > next(k for k in kills if k >= answered[rid][0])
        }
        assert lost == on_the_wire, f"{len(lost - on_the_wire)} answered calls were lost"
        assert_totals(conn, org, set(ids))
    assert len(kills) >= 3 and len(answered) >= 50, (len(kills), len(answered))
    logging.getLogger(__name__).warning(
        "sigkill run: %d processes killed, %d outages, %d calls answered, %d logged (%d by the"
        " successor's drain), %d on the wire at a kill (%d of them answered after the kill)",
        len(kills), outages, len(answered), len(ids), left, len(on_the_wire), len(after_kill),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# 3. Every settle event replayed 3x, shuffled, changes nothing
# ---------------------------------------------------------------------------------------


def _events(org: str, count: int, rng: random.Random) -> list[UsageEvent]:
    events = []
    for i in range(count):
        provider, _, model = KINDS[i % len(KINDS)]
        ok = rng.random() > 0.15
        inp, out = rng.randint(1, 5000), rng.randint(0, 800)
        usage = Usage(
            input_tokens=inp,
            output_tokens=out,
            cached_input_tokens=rng.randint(0, inp // 2),
            reasoning_tokens=rng.randint(0, out // 3),
        )
        events.append(
            UsageEvent(
                organization_id=org,
                request_id=f"replay-{i}",
                provider=provider,
                model=model,
                usage=usage if ok or rng.random() < 0.5 else Usage(),
                success=ok,
                user_id=f"user-{i % 4}",
                latency_ms=rng.randint(5, 900),
                error_code=None if ok else "http_500",
                error_message=None if ok else "provider failed",
                tags=["replay", f"k{i % 3}"],
                metadata={"i": i},
            )
        )
    return events


def _snapshot(conn: Conn, org: str) -> dict[str, Any]:
    quotas = [(name, usage, reserved) for name, usage, _, reserved, _ in quota_report(conn, org)]
    logs = conn.execute(
        "select count(*), count(distinct request_id), sum(cost_usd), sum(credits),"
        " sum(input_tokens), sum(output_tokens), count(*) filter (where success)"
        " from public.api_usage_logs where organization_id = %s",
        (org,),
    ).fetchone()
    reservations = conn.execute(
        "select status, count(*) from public.quota_reservations where organization_id = %s"
        " group by status order by status",
        (org,),
    ).fetchall()
    return {"quotas": quotas, "logs": logs, "reservations": reservations}


def _replay_concurrently(
    backend: PostgresBackend, events: list[UsageEvent], rng: random.Random, threads: int = 4
) -> list[Any]:
    """Sends ``events`` from ``threads`` threads, in random chunks alternating between the
    batch settle and single settles; returns every result."""
    chunks: list[list[UsageEvent]] = []
    i = 0
    while i < len(events):
        size = rng.randint(1, 12)
        chunks.append(events[i : i + size])
        i += size
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    queue = list(enumerate(chunks))

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                n, chunk = queue.pop()
            try:
                if n % 2:
                    out: list[Any] = list(backend.record_usage_batch(chunk))
                else:
                    out = [backend.record_usage(e) for e in chunk]
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                continue
            with lock:
                results.extend(out)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not errors, f"replay failed: {errors[:3]!r}"
    return results


def test_replaying_every_settle_event_three_times_shuffled_changes_no_total(
    db_url: str, conn: Conn
) -> None:
    """Org A settles each event once, in order; org B gets every event 3x, shuffled, from 4
    threads mixing batch and single settles. Then A's events are replayed 3x too. Totals of
    A before and after the replay, and of B, are identical."""
    rng = random.Random(5)
    org_a, org_b = make_org(db_url, "Once"), make_org(db_url, "Thrice")
    events_a = _events(org_a, 120, rng)
    events_b = [e.model_copy(update={"organization_id": org_b}) for e in events_a]
    backend = PostgresBackend(db_url, max_size=6)
    try:
        # Half the calls were reserved first (their holds must be released exactly once).
        for org, events in ((org_a, events_a), (org_b, events_b)):
            for e in events[::2]:
                backend.reserve(
                    org, e.request_id, e.provider, e.model, input_tokens=100,
                    max_output_tokens=1000, user_id=e.user_id,
                )  # fmt: skip
        for e in events_a:
            assert not backend.record_usage(e).duplicate
        once = _snapshot(conn, org_a)

        thrice = events_b * 3
        rng.shuffle(thrice)
        results_b = _replay_concurrently(backend, thrice, rng)
        assert not [r for r in results_b if isinstance(r, QuotaflowError)]
        assert sum(not r.duplicate for r in results_b) == len(events_b)

        replay_a = events_a * 3
        rng.shuffle(replay_a)
        results_a = _replay_concurrently(backend, replay_a, rng)
        assert not [r for r in results_a if isinstance(r, QuotaflowError)]
        assert all(r.duplicate for r in results_a)
    finally:
        backend.close()

    assert _snapshot(conn, org_a) == once
    b = _snapshot(conn, org_b)
    assert b == once
    assert once["logs"][0] == once["logs"][1] == len(events_a)
    assert_totals(conn, org_a, {e.request_id for e in events_a})


def test_replaying_through_outboxes_changes_no_total(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    """The same events put into three outboxes (three processes' leftovers) and drained
    concurrently are recorded once."""
    rng = random.Random(7)
    org = make_org(db_url, "Outboxes")
    events = _events(org, 90, rng)
    backends = [PostgresBackend(db_url, max_size=2) for _ in range(3)]
    boxes = [Outbox(b, tmp_path / f"outbox-{n}.db") for n, b in enumerate(backends)]
    try:
        for box in boxes:
            shuffled = events[:]
            rng.shuffle(shuffled)
            for e in shuffled:
                box.put(e)
        flushed: list[bool] = []
        threads = [threading.Thread(target=lambda b=b: flushed.append(b.flush(30))) for b in boxes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert flushed == [True] * 3
    finally:
        for box, b in zip(boxes, backends, strict=True):
            box.close()
            b.close()
    assert_totals(conn, org, {e.request_id for e in events})


# ---------------------------------------------------------------------------------------
# 4. Soak: no growth in connections, threads or memory
# ---------------------------------------------------------------------------------------


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _library_threads() -> int:
    """Threads, without the fake provider's per-connection handlers (the test double)."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" not in t.name)


def _connections(conn: Conn, app: str) -> int:
    row = conn.execute(
        "select count(*) from pg_stat_activity where application_name = %s", (app,)
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
def test_soak_grows_no_connections_threads_or_memory(
    db_url: str, conn: Conn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mixed load (execute, streams finished and abandoned, provider failures, track_usage,
    track_failure) with connections terminated now and then; sampled after a warm-up and at
    the end."""
    # pytest keeps every captured log record in memory: the expected warnings (a connection
    # discarded, a settle deferred) would look like a leak. Errors are still captured.
    for name in ("psycopg", "quotaflow"):
        caplog.set_level(logging.ERROR, logger=name)
    org = make_org(db_url, "Soak")
    app = "qf-soak"
    outbox_path = tmp_path / "outbox.db"
    Outbox(PostgresBackend(db_url), outbox_path).close()  # the replayer runs from the start
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = itertools.count()
    raw = {"usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}}

    with FakeProviderServer(usage=USAGE) as fake:
        tracker, providers = make_tracker(db_url, fake, outbox_path, app, max_size=4)

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                i = next(calls)
                kind = rng.randrange(6)
                rid = f"soak-{i}"
                ctx = {"organization_id": org, "request_id": rid}
                try:
                    if kind == 0:
                        tracker.track_usage(ctx, "openai", "gpt-4o-mini", raw)
                    elif kind == 1:
                        tracker.track_failure(ctx, "anthropic", "claude-sonnet-4-5", "timeout")
                    elif kind == 2:
                        fake.fail_next(400)
                        tracker.execute_with_tracking(tagged_request(i, rid), ctx)
                    elif kind in (3, 4):
                        stream = tracker.execute_with_tracking(
                            tagged_request(i, rid, stream=True), ctx
                        )
                        for n, _ in enumerate(stream):
                            if kind == 4 and n == 1:
                                break
                        stream.close()
                    else:
                        tracker.execute_with_tracking(tagged_request(i, rid), ctx)
                except (ProviderError, BackendUnavailableError):
                    pass
                except BaseException as exc:
                    errors.append(exc)
                    return

        chaos = Chaos(db_url, app, interval=(0.5, 1.5))
        workers = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        started = time.monotonic()
        chaos.start()
        for t in workers:
            t.start()

        def sample() -> tuple[int, int, int]:
            fake.reset()  # the test double's request log is not the library's memory
            return _connections(conn, app), _library_threads(), _rss_kb()

        time.sleep(SOAK_SECONDS / 3)
        early = sample()
        early_calls = next(calls)
        time.sleep(SOAK_SECONDS * 2 / 3)
        late = sample()
        stop.set()
        for t in workers:
            t.join(timeout=60)
        chaos.stop()
        total_calls = next(calls)
        assert tracker.flush(timeout=30)
        tracker.close()
        providers.close()

    print(
        f"\nsoak: {total_calls} calls in {time.monotonic() - started:.0f}s"
        f" ({early_calls} by the early sample), {chaos.terminated} connections terminated;"
        f" connections {early[0]} -> {late[0]}, threads {early[1]} -> {late[1]},"
        f" RSS {early[2] // 1024} -> {late[2] // 1024} MiB"
    )
    assert not errors, errors[:3]
    assert total_calls > early_calls * 1.2, "the load stalled"
    assert late[0] <= max(early[0], 4), "database connections grew"
    assert late[1] <= early[1], "threads grew"
    assert late[2] <= early[2] + 16 * 1024, "RSS grew by more than 16 MiB"
    deadline = time.monotonic() + 5  # a closed session leaves pg_stat_activity a moment later
    while (left := _connections(conn, app)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == 0, "close() left connections open"
    assert_totals(conn, org, set(logged_ids(conn, org)))
