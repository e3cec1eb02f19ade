"""Durable outbox: usage events the backend could not take are kept on disk and replayed.

Why SQLite in WAL mode rather than an append-only file: an event must be removed exactly when
the backend acknowledges it, several threads and processes (an app, a crashed app's
successor, ``quotaflow outbox flush``) may read and write the same outbox at once, and
``quotaflow outbox status`` wants counts and ages. SQLite gives atomic inserts and deletes,
cross-process locking and crash safety (``synchronous=FULL`` fsyncs every commit) from the
standard library; a hand-rolled log would need its own compaction, locking and recovery.

Replays are idempotent: ``record_usage`` treats the same ``(organization_id, request_id)``
as one event, so an event delivered twice (a crash between the backend's commit and the
outbox's delete) is still charged once.
"""

from __future__ import annotations

import hashlib
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

_SCHEMA = """
create table if not exists events (
  organization_id text not null,
  request_id text not null,
  payload text not null,
  attempts integer not null default 0,
  next_attempt_at real not null,
  last_error text,
  dead integer not null default 0,
  created_at real not null,
  primary key (organization_id, request_id)
)
"""


def default_outbox_path(backend_identity: str | None = None) -> Path:
    """``QUOTAFLOW_OUTBOX_PATH``, else one file per backend under ``~/.quotaflow``, so a
    process never replays another database's events into its own."""
    env = os.environ.get("QUOTAFLOW_OUTBOX_PATH")
    if env:
        return Path(env)
    if not backend_identity:
        return Path.home() / ".quotaflow" / "outbox.sqlite3"
    digest = hashlib.sha256(backend_identity.encode()).hexdigest()[:12]
    return Path.home() / ".quotaflow" / f"outbox-{digest}.sqlite3"


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
        with self._db() as db:
            db.execute(_SCHEMA)

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

    def put(self, event: UsageEvent, error: str | None = None) -> None:
        """Stores an event durably (fsynced) before returning; the same request_id once."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "insert or ignore into events (organization_id, request_id, payload, attempts,"
                " next_attempt_at, last_error, created_at) values (?, ?, ?, 0, ?, ?, ?)",
                (
                    event.organization_id,
                    event.request_id,
                    event.model_dump_json(),
                    now + REPLAY_POLICY.backoff(1),
                    error,
                    now,
                ),
            )
        self.start()

    # ---- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Counts of pending and dead events, the oldest pending age and the last error."""
        row = (
            self._db()
            .execute(
                "select count(*) filter (where dead = 0), count(*) filter (where dead = 1),"
                " min(created_at) filter (where dead = 0), max(attempts) from events"
            )
            .fetchone()
        )
        last = (
            self._db()
            .execute(
                "select last_error from events where last_error is not null"
                " order by next_attempt_at desc limit 1"
            )
            .fetchone()
        )
        pending, dead, oldest, attempts = row if row else (0, 0, None, None)
        return {
            "path": str(self.path),
            "pending": pending or 0,
            "dead": dead or 0,
            "oldest_age_seconds": None if oldest is None else round(time.time() - oldest, 1),
            "max_attempts": attempts or 0,
            "last_error": last[0] if last else None,
        }

    def pending(self) -> int:
        row = self._db().execute("select count(*) from events where dead = 0").fetchone()
        return int(row[0]) if row else 0

    # ---- draining ------------------------------------------------------------------

    def drain_once(self, *, only_due: bool = True) -> int:
        """Delivers one batch of (due) events; returns how many the backend acknowledged.

        Raises BackendUnavailableError when the backend is still away (events keep their
        place with a longer backoff)."""
        with self._drain_lock:
            now = time.time()
            rows = (
                self._db()
                .execute(
                    "select organization_id, request_id, payload, attempts from events"
                    " where dead = 0"
                    + (" and next_attempt_at <= ?" if only_due else "")
                    + " order by created_at limit ?",
                    (now, REPLAY_BATCH) if only_due else (REPLAY_BATCH,),
                )
                .fetchall()
            )
            if not rows:
                return 0
            events = [UsageEvent.model_validate_json(r[2]) for r in rows]
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
                    key = (row[0], row[1])
                    if isinstance(result, TrackingError):
                        # The backend failed on this event (unreachable, deadlock, a
                        # serialization failure, ...), it did not refuse it: try again later.
                        db.execute(
                            "update events set attempts = attempts + 1, next_attempt_at = ?,"
                            " last_error = ? where organization_id = ? and request_id = ?",
                            (time.time() + REPLAY_POLICY.backoff(row[3] + 1), str(result), *key),
                        )
                    elif isinstance(result, QuotaflowError):
                        # A permanent refusal (unknown model, conflicting replay, invalid
                        # usage): keep it for a person to inspect instead of retrying forever.
                        log.error("outbox event %s/%s refused: %s", *key, result)
                        db.execute(
                            "update events set dead = 1, attempts = attempts + 1, last_error = ?"
                            " where organization_id = ? and request_id = ?",
                            (f"{type(result).__name__}: {result}", *key),
                        )
                    else:
                        db.execute(
                            "delete from events where organization_id = ? and request_id = ?", key
                        )
                        delivered += 1
            return delivered

    def _deliver_one(self, event: UsageEvent) -> Any:
        try:
            return self.backend.record_usage(event)
        except QuotaflowError as exc:
            return exc

    def _postpone(self, rows: list[Any], error: str) -> None:
        with self._db() as db:
            for org, rid, _, attempts in rows:
                db.execute(
                    "update events set attempts = attempts + 1, next_attempt_at = ?,"
                    " last_error = ? where organization_id = ? and request_id = ?",
                    (time.time() + REPLAY_POLICY.backoff(attempts + 1), error, org, rid),
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
            thread.join(timeout=5)
        with self._state_lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        # Threads that used a (now closed) connection reopen one if used again.
        self._local = threading.local()
        return drained
