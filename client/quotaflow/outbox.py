"""Durable outbox: usage events the backend could not take are kept on disk and replayed.

Why SQLite in WAL mode rather than an append-only file: an event must be removed exactly when
the backend acknowledges it, several threads and processes (an app, a crashed app's
successor, ``quotaflow outbox flush``) may read and write the same outbox at once, and
``quotaflow outbox status`` wants counts and ages. SQLite gives atomic inserts and deletes,
cross-process locking and crash safety (``synchronous=FULL`` fsyncs every commit) from the
standard library; a hand-rolled log would need its own compaction, locking and recovery.

Durable first: a tracker queues every usage event here the moment the provider answered and
calls the backend meanwhile; a writer thread commits (fsyncs) what is queued after a short
window (``GROUP_COMMIT_WINDOW``), several settles in one commit, and the tracker waits for that
commit before it reports an event deferred or refused. Once the backend acknowledged an event
its delete is queued behind the insert (which is skipped when it was not written yet). So the
common case (database up) pays no fsync on the caller's thread, and a process killed after the
provider answered leaves the event in the database or on disk for its successor — unless it
dies within the window and the commit that follows it (a few milliseconds; longer only while
another process holds the file's lock), the same kind of gap as an answer still in transit.
Replays are idempotent: ``record_usage`` treats the same ``(organization_id, request_id)`` as
one event, so an event delivered twice (a crash between the backend's commit and the outbox's
delete) is charged once.

Each event is bound to the database it is meant for (its *target*: ``pg:<system
identifier>/<database>``, or ``url:<URL without password>`` before the first connection, or
``http:<functions URL>``). An outbox replays only the events of its backend's targets; events
for other databases stay where they are and are reported by :meth:`Outbox.status`, so one file
can serve every tracker on a machine without staging usage landing in production.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._retry import RetryPolicy
from .errors import BackendUnavailableError, ConfigurationError, QuotaflowError, TrackingError
from .models import UsageEvent

if TYPE_CHECKING:
    from .backends import Backend

log = logging.getLogger("quotaflow.outbox")

REPLAY_POLICY = RetryPolicy(
    initial_delay=0.5, multiplier=2.0, max_delay=60.0, jitter=0.25, max_attempts=sys.maxsize
)
"""Waits between replays of an event that failed to deliver; events are never given up."""
REPLAY_BATCH = 200
POLL_INTERVAL = 0.5
"""How often the background replayer looks for due events when idle."""

IN_FLIGHT_LEASE = 30.0
"""Seconds an event put before its own settle is left to that settle before the background
replayer may deliver it too (a successor's flush takes it at once)."""

_SCHEMA = """
create table if not exists events (
  target text not null,
  organization_id text not null,
  request_id text not null,
  payload text not null,
  attempts integer not null default 0,
  next_attempt_at real not null,
  last_error text,
  dead integer not null default 0,
  created_at real not null,
  primary key (target, organization_id, request_id)
)
"""
_SCHEMA_VERSION = 2
# Version 1 had no target: its events are kept with target '' ("unbound"), replayed only when
# someone names their database (quotaflow outbox flush --claim-unbound).
_UPGRADE_FROM_1 = (
    "alter table events rename to events_v1",
    _SCHEMA,
    "insert into events select '', organization_id, request_id, payload, attempts,"
    " next_attempt_at, last_error, dead, created_at from events_v1",
    "drop table events_v1",
)
UNBOUND = ""


def default_outbox_path() -> Path:
    """``QUOTAFLOW_OUTBOX_PATH``, else ``~/.quotaflow/outbox.sqlite3``: one file for every
    tracker of the user, each event bound to its own database."""
    env = os.environ.get("QUOTAFLOW_OUTBOX_PATH")
    return Path(env) if env else Path.home() / ".quotaflow" / "outbox.sqlite3"


_KEY = "target = ? and organization_id = ? and request_id = ?"


GROUP_COMMIT_WINDOW = 0.002
"""Seconds the writer lets a queued event wait for its own settle's outcome before committing
it with whatever else was queued: an event the backend recorded meanwhile is never written, so
the common case (database up) costs no disk I/O; otherwise it is on disk this much later."""

_INSERT = (
    "insert or ignore into events (target, organization_id, request_id, payload,"
    " attempts, next_attempt_at, last_error, created_at) values (?, ?, ?, ?, 0, ?, ?, ?)"
)


class Written:
    """An outbox write queued for the writer thread."""

    __slots__ = ("_done", "_error", "key", "kind", "params")

    def __init__(self, kind: str, key: tuple[str, str], params: tuple[Any, ...]) -> None:
        self.kind = kind
        self.key = key
        self.params = params
        self._done = threading.Event()
        self._error: BaseException | None = None

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    def wait(self) -> None:
        """Returns once the write is committed (fsynced); raises what made it fail."""
        self._done.wait()
        if self._error is not None:
            raise TrackingError(f"the outbox could not store the event: {self._error}")


def _refusal(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Outbox:
    """A durable queue of usage events, drained into a backend by a background thread."""

    def __init__(self, backend: Backend | None, path: str | Path | None = None) -> None:
        self._backend = backend
        self.path = Path(path) if path is not None else default_outbox_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._drain_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._thread: threading.Thread | None = None
        self._writes: list[Written] = []
        self._writes_cv = threading.Condition()
        self._writer: tuple[threading.Thread, threading.Event] | None = None
        db = self._db()
        db.execute("begin immediate")  # one process creates or upgrades the file at a time
        try:
            columns = {r[1] for r in db.execute("pragma table_info(events)")}
            for statement in _UPGRADE_FROM_1 if columns and "target" not in columns else (_SCHEMA,):
                db.execute(statement)
            db.execute(f"pragma user_version = {_SCHEMA_VERSION}")
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
        self.claim_unbound = False
        """True: this outbox also delivers the events of an older quotaflow that were stored
        without a target (the user named their database)."""

    def _others_pending(self, targets: list[str]) -> bool:
        row = (
            self._db()
            .execute(
                "select exists (select 1 from events where dead = 0 and target not in"
                f" ({', '.join('?' * len(targets))}))",
                targets,
            )
            .fetchone()
        )
        return bool(row and row[0])

    def _mine(self, resolve: bool = False) -> tuple[str, list[str]]:
        """A ``target in (...)`` condition for the backend's targets, and its parameters;
        ``resolve`` connects first if that is what it takes to know them all."""
        targets = list(self.backend.targets)
        if resolve and self._others_pending(targets):
            targets = list(self.backend.resolve_targets())
        if self.claim_unbound:
            targets.append(UNBOUND)
        return f"target in ({', '.join('?' * len(targets))})", targets

    @property
    def backend(self) -> Backend:
        """Where events are delivered; an outbox opened without one can only be inspected."""
        if self._backend is None:
            raise ConfigurationError(f"outbox {self.path} was opened without a backend")
        return self._backend

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            # One connection per thread (sqlite3 connections are not shared between threads);
            # all of them are remembered so close() can close them.
            db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            db.execute("pragma journal_mode = wal")
            db.execute("pragma synchronous = full")
            self._local.db = db
            with self._state_lock:
                self._connections.append(db)
        return db

    # ---- writing -------------------------------------------------------------------

    def put(self, event: UsageEvent, error: str | None = None, *, in_flight: bool = False) -> None:
        """Stores an event durably (fsynced) before returning; the same request_id once per
        database. ``in_flight``: the caller delivers it now itself (and then calls
        :meth:`acknowledge` or :meth:`defer`); the replayer leaves it alone meanwhile."""
        self.put_soon(event, error, in_flight=in_flight).wait()
        if not in_flight:
            self.start()

    def put_soon(
        self, event: UsageEvent, error: str | None = None, *, in_flight: bool = False
    ) -> Written:
        """Queues the event for the writer thread, which commits what is queued together;
        ``wait()`` on the result returns once it is on disk. The caller may meanwhile deliver
        the event itself (``in_flight``), as :meth:`put` says."""
        now = time.time()
        due = now + (IN_FLIGHT_LEASE if in_flight else REPLAY_POLICY.backoff(1))
        key = (event.organization_id, event.request_id)
        # The event is serialized by the writer, only if it is written at all.
        params = (self.backend.targets[0], *key, event, due, error, now)
        return self._queue(Written("insert", key, params))

    def acknowledge(self, event: UsageEvent) -> None:
        """The backend recorded the event: forget it. Queued behind its insert, which is then
        skipped if it was not written yet; not fsynced (a crash that undoes this delete only
        replays an event the backend treats as a duplicate)."""
        key = (event.organization_id, event.request_id)
        self._queue(Written("delete", key, key))

    def _queue(self, write: Written) -> Written:
        with self._writes_cv:
            self._writes.append(write)
            if self._writer is None or not self._writer[0].is_alive():
                # Each writer has its own stop flag: one told to stop while a new one starts
                # (a write queued during close) drains and exits, the new one carries on.
                stop = threading.Event()
                thread = threading.Thread(
                    target=self._write_loop, args=(stop,), name="quotaflow-outbox-writer",
                    daemon=True,
                )  # fmt: skip
                self._writer = (thread, stop)
                thread.start()
            self._writes_cv.notify_all()
        return write

    def _write_loop(self, stop: threading.Event) -> None:
        while True:
            with self._writes_cv:
                while not self._writes and not stop.is_set():
                    self._writes_cv.wait()
                deadline = time.monotonic() + GROUP_COMMIT_WINDOW
                while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                    self._writes_cv.wait(left)
                batch, self._writes = self._writes, []
            if not batch:
                return
            try:
                self._write(batch)
                error = None
            except Exception as exc:  # the disk, not the event: every waiter hears it
                log.exception("outbox write of %d event(s) failed", len(batch))
                error = exc
            for write in batch:
                write._finish(error)

    def _write(self, batch: list[Written]) -> None:
        """One transaction, one fsync, for every write queued meanwhile. An insert whose
        delete is queued behind it is not written (the backend has the event); the delete
        still runs, for a row an earlier attempt left under the same request_id (a delete
        that finds nothing writes nothing)."""
        last_delete = {w.key: i for i, w in enumerate(batch) if w.kind == "delete"}
        inserts = [
            (*w.params[:3], w.params[3].model_dump_json(), *w.params[4:])
            for i, w in enumerate(batch)
            if w.kind == "insert" and last_delete.get(w.key, -1) < i
        ]
        deletes = [w.key for w in batch if w.kind == "delete"]
        where, targets = self._mine()
        db = self._db()
        if not inserts:
            db.execute("pragma synchronous = normal")
        try:
            db.execute("begin immediate")
            try:
                db.executemany(_INSERT, inserts)
                db.executemany(
                    f"delete from events where {where} and organization_id = ? and request_id = ?",
                    [(*targets, *key) for key in deletes],
                )
                db.execute("commit")
            except BaseException:
                db.execute("rollback")
                raise
        finally:
            if not inserts:
                db.execute("pragma synchronous = full")

    def _stop_writer(self) -> None:
        with self._writes_cv:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer[1].set()
            self._writes_cv.notify_all()
        if writer is not None:
            writer[0].join(timeout=15)

    def defer(self, event: UsageEvent, error: str) -> None:
        """The backend could not take the event now: the replayer retries it with backoff."""
        self._update(event, "next_attempt_at = ?", time.time() + REPLAY_POLICY.backoff(1), error)
        self.start()

    def refuse(self, event: UsageEvent, error: BaseException) -> None:
        """The backend refused the event for good: kept as dead for a person to inspect."""
        self._update(event, "dead = 1, next_attempt_at = ?", time.time(), _refusal(error))

    def _update(self, event: UsageEvent, assignments: str, value: Any, error: str) -> None:
        where, targets = self._mine()
        with self._db() as db:
            db.execute(
                f"update events set {assignments}, attempts = attempts + 1, last_error = ?"
                f" where {where} and organization_id = ? and request_id = ?",
                (value, error, *targets, event.organization_id, event.request_id),
            )

    # ---- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts of pending and dead events, the oldest pending age and the last error, in
        all and per database (``targets``); with a backend, ``mine`` says which are its own."""
        rows = (
            self._db()
            .execute(
                "select target, count(*) filter (where dead = 0), count(*) filter (where dead = 1),"
                " min(created_at) filter (where dead = 0), max(attempts)"
                " from events group by target order by target"
            )
            .fetchall()
        )
        last = (
            self._db()
            .execute(
                "select last_error from events where last_error is not null"
                " order by next_attempt_at desc limit 1"
            )
            .fetchone()
        )
        mine = set(self._mine()[1]) if self._backend is not None else None
        now = time.time()

        def age(oldest: float | None) -> float | None:
            return None if oldest is None else round(now - oldest, 1)

        oldest = min((r[3] for r in rows if r[3] is not None), default=None)
        return {
            "path": str(self.path),
            "pending": sum(r[1] for r in rows),
            "dead": sum(r[2] for r in rows),
            "oldest_age_seconds": age(oldest),
            "max_attempts": max((r[4] for r in rows), default=0),
            "last_error": last[0] if last else None,
            "targets": [
                {
                    "target": r[0] or "unbound (an older quotaflow; flush --claim-unbound)",
                    "pending": r[1],
                    "dead": r[2],
                    "oldest_age_seconds": age(r[3]),
                    **({} if mine is None else {"mine": r[0] in mine}),
                }
                for r in rows
            ],
        }

    def pending(self) -> int:
        """Events waiting for delivery: this backend's, or all without a backend."""
        if self._backend is None:
            row = self._db().execute("select count(*) from events where dead = 0").fetchone()
        else:
            where, targets = self._mine(resolve=True)
            row = (
                self._db()
                .execute(f"select count(*) from events where dead = 0 and {where}", targets)
                .fetchone()
            )
        return int(row[0]) if row else 0

    # ---- draining ------------------------------------------------------------------

    def drain_once(self, *, only_due: bool = True) -> int:
        """Delivers one batch of (due) events; returns how many the backend acknowledged.

        Raises BackendUnavailableError when the backend is still away (events keep their
        place with a longer backoff)."""
        with self._drain_lock:
            now = time.time()
            where, targets = self._mine(resolve=True)
            rows = (
                self._db()
                .execute(
                    "select target, organization_id, request_id, payload, attempts from events"
                    f" where dead = 0 and {where}"
                    + (" and next_attempt_at <= ?" if only_due else "")
                    + " order by created_at limit ?",
                    (*targets, *((now,) if only_due else ()), REPLAY_BATCH),
                )
                .fetchall()
            )
            if not rows:
                return 0
            events = [UsageEvent.model_validate_json(r[3]) for r in rows]
            try:
                results = self.backend.record_usage_batch(events)
            except BackendUnavailableError as exc:
                self._postpone(rows, str(exc))
                raise
            except QuotaflowError as exc:
                # The batch as a whole was refused: deliver one by one to find the bad ones.
                results = [self._deliver_one(e) for e in events]
                log.warning("batch replay refused (%s); delivered events one by one", exc)
            delivered = 0
            with self._db() as db:
                for row, result in zip(rows, results, strict=True):
                    key = (row[0], row[1], row[2])
                    if isinstance(result, TrackingError):
                        # The backend failed on this event (unreachable, deadlock, a
                        # serialization failure, ...), it did not refuse it: try again later.
                        db.execute(
                            "update events set attempts = attempts + 1, next_attempt_at = ?,"
                            f" last_error = ? where {_KEY}",
                            (time.time() + REPLAY_POLICY.backoff(row[4] + 1), str(result), *key),
                        )
                    elif isinstance(result, QuotaflowError):
                        # A permanent refusal (unknown model, conflicting replay, invalid
                        # usage): keep it for a person to inspect instead of retrying forever.
                        log.error("outbox event %s/%s refused: %s", row[1], row[2], result)
                        db.execute(
                            "update events set dead = 1, attempts = attempts + 1, last_error = ?"
                            f" where {_KEY}",
                            (_refusal(result), *key),
                        )
                    else:
                        db.execute(f"delete from events where {_KEY}", key)
                        delivered += 1
            return delivered

    def _deliver_one(self, event: UsageEvent) -> Any:
        try:
            return self.backend.record_usage(event)
        except QuotaflowError as exc:
            return exc

    def _postpone(self, rows: list[Any], error: str) -> None:
        with self._db() as db:
            for target, org, rid, _, attempts in rows:
                db.execute(
                    f"update events set attempts = attempts + 1, next_attempt_at = ?,"
                    f" last_error = ? where {_KEY}",
                    (time.time() + REPLAY_POLICY.backoff(attempts + 1), error, target, org, rid),
                )

    def flush(self, timeout: float = 30.0) -> bool:
        """Delivers everything pending now, retrying with backoff until ``timeout`` seconds
        have passed; True when nothing is left pending."""
        deadline = time.monotonic() + timeout
        retry = 0
        while self.pending():
            try:
                if self.drain_once(only_due=False):
                    retry = 0
                    continue
            except (BackendUnavailableError, TrackingError) as exc:
                log.info("outbox flush: backend still unavailable (%s)", exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            retry += 1
            time.sleep(min(REPLAY_POLICY.backoff(retry) / 4, remaining))
        return True

    # ---- background replayer -------------------------------------------------------

    def start(self) -> None:
        """Starts the background replayer (idempotent, thread-safe: one replayer at most)."""
        with self._state_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="quotaflow-outbox", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.drain_once():
                    continue
            except (BackendUnavailableError, TrackingError) as exc:
                log.debug("outbox replay postponed: %s", exc)
            except Exception:
                # Not the backend being away: a bug worth seeing. The events stay on disk.
                log.exception("outbox replay failed")
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()

    def close(self, timeout: float = 10.0) -> bool:
        """Tries to drain within ``timeout`` seconds, then stops the replayer. Events still
        pending stay on disk for the next process. True when nothing was left."""
        drained = self.flush(timeout) if self.pending() else True
        with self._state_lock:
            self._stop.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=15)  # a replay in flight ends within its connect and pool waits
        self._stop_writer()  # what is queued is written first
        with self._state_lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        # Threads that used a (now closed) connection reopen one if used again.
        self._local = threading.local()
        return drained
