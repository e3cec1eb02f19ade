"""Backends: where the Tracker reserves, settles and reads quotas.

Both implement :class:`Backend`:

* :class:`PostgresBackend` calls the SQL functions (``reserve_quota``, ``record_usage``, ...)
  over a psycopg 3 pool. Every call is one autocommit statement and prepared statements are
  off, so it works behind Supabase's transaction pooler (port 6543) as well as directly.
* :class:`HttpBackend` calls the HTTP functions (``/functions/v1/<name>``) of a quotaflow
  deployment, e.g. a Supabase project, with a service-role or organization API key.

SQL errors are translated to the exception tree in :func:`translate_db_error` (by errcode);
HTTP error bodies in :func:`translate_http_error` (by ``code``, else status): both with the
maps :mod:`quotaflow.errors` derives from its classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import httpx

from ._retry import RetryPolicy
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    QuotaflowError,
    TrackingError,
    ValidationError,
    error_for_http,
    error_for_sqlstate,
)
from .models import (
    QuotaCheck,
    QuotaStatus,
    RecordResult,
    Reservation,
    Usage,
    UsageEvent,
    UsageRecord,
)

T = TypeVar("T")

log = logging.getLogger("quotaflow.backends")

# Retries of a backend call that failed because the connection broke. Every write is
# idempotent by request_id, so repeating one is safe.
BACKEND_RETRY = RetryPolicy(initial_delay=0.05, multiplier=4.0, jitter=0.5, max_attempts=3)


class Backend(Protocol):
    """What the Tracker needs from a store of quotas and usage."""

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of this store for the outbox (no secrets): new events carry the first, and
        the events of every one are this store's to replay."""
        ...

    def resolve_targets(self) -> tuple[str, ...]:
        """:attr:`targets`, after connecting if that is what it takes to know them all."""
        ...

    def reserve(
        self,
        organization_id: str,
        request_id: str,
        provider: str,
        model: str,
        *,
        estimated_cost: Decimal | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        user_id: str | None = None,
        ttl_seconds: int = 300,
    ) -> Reservation: ...

    def record_usage(self, event: UsageEvent) -> RecordResult: ...

    def record_usage_batch(
        self, events: Sequence[UsageEvent]
    ) -> list[RecordResult | QuotaflowError]: ...

    def release(self, organization_id: str, request_id: str) -> bool: ...

    def estimate_cost(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal: ...

    def check_quota(
        self,
        organization_id: str,
        provider: str,
        model: str,
        estimated_cost: Decimal,
        user_id: str | None = None,
    ) -> list[QuotaCheck]: ...

    def get_quota_status(self, organization_id: str) -> list[QuotaStatus]: ...

    def get_record(self, organization_id: str, request_id: str) -> UsageRecord | None: ...

    def close(self) -> None: ...


def _retrying(fn: Callable[[], T], transient: Callable[[Exception], bool]) -> T:
    for attempt in range(1, BACKEND_RETRY.max_attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == BACKEND_RETRY.max_attempts or not transient(exc):
                raise
            time.sleep(BACKEND_RETRY.backoff(attempt))
    raise AssertionError("unreachable")


def _detail(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def translate_db_error(exc: Exception) -> QuotaflowError:
    """Maps a psycopg error to the exception tree by SQLSTATE."""
    import psycopg

    if isinstance(exc, QuotaflowError):
        return exc
    if not isinstance(exc, psycopg.Error):
        return TrackingError(f"tracking backend failed: {exc}")
    message = exc.diag.message_primary or str(exc)
    error: QuotaflowError
    if isinstance(exc, psycopg.OperationalError) and not exc.sqlstate:
        error = BackendUnavailableError(f"database unavailable: {message}")
    else:
        error = error_for_sqlstate(exc.sqlstate or "", message, _detail(exc.diag.message_detail))
    error.__cause__ = exc  # as `raise ... from exc` would: the HTTP layer reads it
    return error


def _transient_db(exc: Exception) -> bool:
    import psycopg
    import psycopg_pool

    if isinstance(exc, psycopg_pool.PoolTimeout):
        return False
    state = getattr(exc, "sqlstate", None) or ""
    return (
        isinstance(exc, psycopg.OperationalError)
        or state[:2] in ("08", "57")
        or state
        in (
            "40001",
            "40P01",
        )
    )


def _event_params(e: UsageEvent) -> dict[str, Any]:
    from psycopg.types.json import Jsonb

    u = e.usage
    return {
        "organization_id": e.organization_id,
        "request_id": e.request_id,
        "provider": e.provider,
        "model": e.model,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cached_input_tokens": u.cached_input_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "success": e.success,
        "user_id": e.user_id,
        "session_id": e.session_id,
        "workflow_id": e.workflow_id,
        "conversation_id": e.conversation_id,
        "latency_ms": e.latency_ms,
        "finish_reason": e.finish_reason,
        "error_code": e.error_code,
        "error_message": e.error_message,
        "usage_estimated": u.estimated,
        "tags": e.tags,
        "metadata": Jsonb(e.metadata),
        "occurred_at": e.occurred_at,
        "usage_details": Jsonb(u.details),
        "service_tier": u.service_tier,
    }


_RECORD_SQL = (
    "select * from public.record_usage("
    + ", ".join(
        f"{name} => %({name})s"
        for name in (
            "organization_id",
            "request_id",
            "provider",
            "model",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "success",
            "user_id",
            "session_id",
            "workflow_id",
            "conversation_id",
            "latency_ms",
            "finish_reason",
            "error_code",
            "error_message",
            "usage_estimated",
            "tags",
            "metadata",
            "occurred_at",
            "usage_details",
            "service_tier",
        )
    )
    + ")"
)


def _without_password(url: str) -> str:
    import psycopg.conninfo

    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except Exception:
        return url.split("@")[-1]
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


def database_url_from_env() -> str | None:
    return os.environ.get("QUOTAFLOW_DATABASE_URL") or os.environ.get("DATABASE_URL")


DEFAULT_CONNECT_TIMEOUT = 2.0
"""Seconds to establish a connection (``QUOTAFLOW_CONNECT_TIMEOUT``); with the database down
a call is refused within this."""
DEFAULT_POOL_TIMEOUT = 5.0
"""Seconds a call waits for a free pooled connection while the database is up
(``QUOTAFLOW_POOL_TIMEOUT``)."""

# How the server refuses a connection when the configuration is wrong, not the network: no
# such database or role, authentication failed, no pg_hba.conf entry, no right to connect.
# libpq reports no SQLSTATE for a failed connection, only the server's FATAL message.
_CONFIG_REFUSALS = re.compile(
    r"FATAL:.*(does not exist|authentication failed|no pg_hba\.conf entry|permission denied)"
)


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return value
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigurationError(f"{env} must be a number of seconds (got {raw!r})") from None
    if seconds <= 0:
        raise ConfigurationError(f"{env} must be positive (got {raw!r})")
    return seconds


class _PoolConnectNoise:
    """psycopg_pool warns on every failed reconnect attempt (several a second in an
    outage); the backend logs one warning per outage instead, so those records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error connecting in 'quotaflow")


logging.getLogger("psycopg.pool").addFilter(_PoolConnectNoise())


def _database_target(conn: Any) -> str | None:
    """The cluster's system identifier and the database's name, or None where the role may
    not read pg_control_system()."""
    import psycopg

    try:
        row = conn.execute(
            "select system_identifier::text, current_database() from pg_catalog.pg_control_system()"
        ).fetchone()
    except psycopg.Error:
        return None
    return f"pg:{row[0]}/{row[1]}" if row else None


class PostgresBackend:
    """Calls the SQL functions over a lazily opened psycopg pool.

    A malformed URL raises :class:`ConfigurationError` here; a database that does not exist
    or refuses the credentials raises it on first use, at once. With the database down a
    call fails with :class:`BackendUnavailableError` within ``connect_timeout`` (default 2 s,
    ``QUOTAFLOW_CONNECT_TIMEOUT``); ``timeout`` is how long a call waits for a free pooled
    connection while the database is up (default 5 s, ``QUOTAFLOW_POOL_TIMEOUT``).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        import psycopg.conninfo

        url = database_url or database_url_from_env()
        if not url:
            raise ConfigurationError(
                "no database URL: pass database_url or set QUOTAFLOW_DATABASE_URL / DATABASE_URL"
            )
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
            ports = str(params.get("port") or "0").split(",")
            if not all(p.strip().isdigit() for p in ports):
                raise psycopg.ProgrammingError(f"invalid port {params['port']!r}")
        except psycopg.ProgrammingError:
            raise ConfigurationError(
                "the database URL is neither a postgresql:// URL nor a key=value connection string"
            ) from None
        self._url = url
        self.identity = _without_password(url)
        """Names the database (no secrets); the default outbox file is chosen by it."""
        self._min_size = min_size
        self._max_size = max_size or int(os.environ.get("QUOTAFLOW_POOL_SIZE", "10"))
        self._timeout = _seconds(timeout, "QUOTAFLOW_POOL_TIMEOUT", DEFAULT_POOL_TIMEOUT)
        in_url = params.get("connect_timeout")
        self.connect_timeout = _seconds(
            connect_timeout if connect_timeout is not None or not in_url else float(in_url),
            "QUOTAFLOW_CONNECT_TIMEOUT",
            DEFAULT_CONNECT_TIMEOUT,
        )
        """Argument, else the URL's own ``connect_timeout``, else the environment, else 2 s."""
        self._pool: Any = None
        self._lock = threading.Lock()
        self._db_target: str | None = None
        self._down = False
        """Set when a connection failed: calls then probe with a fresh connection (bounded by
        connect_timeout) instead of waiting on the pool, until one succeeds."""

    @property
    def targets(self) -> tuple[str, ...]:
        """``pg:<system identifier>/<database>`` once connected (the same whatever URL reaches
        the database), and ``url:<URL without password>``, which events recorded before the
        first connection carry."""
        by_url = "url:" + self.identity
        return (self._db_target, by_url) if self._db_target else (by_url,)

    def resolve_targets(self) -> tuple[str, ...]:
        if self._db_target is None and self._pool is None:
            # One direct connection, never a pool: the outbox's replayer calls this, also
            # while the tracker closes.
            with contextlib.suppress(QuotaflowError):  # unreachable: the URL target for now
                self._probe()
        return self.targets

    def _probe(self) -> None:
        """One direct connection: ConfigurationError for a wrong database or credentials,
        BackendUnavailableError when unreachable (within connect_timeout)."""
        import psycopg

        try:
            with psycopg.connect(
                self._url, connect_timeout=max(1, round(self.connect_timeout)), autocommit=True
            ) as conn:
                if self._db_target is None:
                    self._db_target = _database_target(conn)
        except psycopg.Error as exc:
            message = str(exc).strip().splitlines()[-1]
            if _CONFIG_REFUSALS.search(str(exc)):
                raise ConfigurationError(f"database {self.identity!r}: {message}") from exc
            if not self._down:
                log.warning("database %s unreachable: %s", self.identity, message)
            self._down = True
            raise BackendUnavailableError(f"database unavailable: {message}") from exc
        if self._down:
            log.warning("database %s reachable again", self.identity)
        self._down = False

    def _get_pool(self) -> Any:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from psycopg.rows import dict_row
                    from psycopg_pool import ConnectionPool

                    self._probe()
                    self._pool = ConnectionPool(
                        self._url,
                        min_size=self._min_size,
                        max_size=self._max_size,
                        timeout=self._timeout,
                        kwargs={
                            "autocommit": True,
                            "prepare_threshold": None,
                            "row_factory": dict_row,
                            "connect_timeout": max(1, round(self.connect_timeout)),
                        },
                        open=True,
                        name="quotaflow",
                    )
        elif self._down:
            self._probe()
        return self._pool

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """A pooled connection (autocommit, dict rows); returned to the pool on exit.
        ``timeout`` bounds the wait for it (default: the pool's)."""
        import psycopg
        import psycopg_pool

        try:
            with self._get_pool().connection(timeout=timeout) as conn:
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            waited = self._timeout if timeout is None else timeout
            raise BackendUnavailableError(f"no database connection within {waited:.1f} s") from exc
        except psycopg.OperationalError as exc:
            if not exc.sqlstate or exc.sqlstate[:2] in ("08", "57"):
                self._down = True  # the next call probes instead of waiting on the pool
            raise

    def _rows(self, sql: str, params: dict[str, Any] | Sequence[Any]) -> list[dict[str, Any]]:
        def once() -> list[dict[str, Any]]:
            with self.connection() as conn:
                return list(conn.execute(sql, params).fetchall())

        try:
            return _retrying(once, _transient_db)
        except Exception as exc:
            raise translate_db_error(exc) from exc

    def reserve(
        self,
        organization_id: str,
        request_id: str,
        provider: str,
        model: str,
        *,
        estimated_cost: Decimal | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        user_id: str | None = None,
        ttl_seconds: int = 300,
    ) -> Reservation:
        row = self._rows(
            "select * from public.reserve_quota(organization_id => %s, request_id => %s,"
            " provider => %s, model => %s, estimated_cost => %s, input_tokens => %s,"
            " max_output_tokens => %s, user_id => %s, ttl_seconds => %s)",
            (
                organization_id,
                request_id,
                provider,
                model,
                estimated_cost,
                input_tokens,
                max_output_tokens,
                user_id,
                ttl_seconds,
            ),
        )[0]
        return Reservation.model_validate(_stringify_ids(row))

    def record_usage(self, event: UsageEvent) -> RecordResult:
        row = self._rows(_RECORD_SQL, _event_params(event))[0]
        return RecordResult.model_validate(_stringify_ids(row))

    def record_usage_batch(
        self, events: Sequence[UsageEvent]
    ) -> list[RecordResult | QuotaflowError]:
        """Settles many events in one round trip; each result is the event's record or error."""
        from psycopg.types.json import Jsonb

        if not events:
            return []
        rows = self._rows(
            "select * from public.record_usage_batch(%s) order by idx",
            (Jsonb([e.model_dump(mode="json") for e in events]),),
        )
        out: list[RecordResult | QuotaflowError] = []
        for row in rows:
            if row["error_code"]:
                out.append(error_for_sqlstate(row["error_code"], row["error_message"]))
            else:
                result = {k: row[k] for k in RecordResult.model_fields}  # not idx, error_*
                out.append(RecordResult.model_validate(_stringify_ids(result)))
        return out

    def release(self, organization_id: str, request_id: str) -> bool:
        row = self._rows(
            "select public.release_reservation(%s, %s) as released", (organization_id, request_id)
        )[0]
        return bool(row["released"])

    def estimate_cost(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        row = self._rows(
            "select public.estimate_cost(%s, %s, %s, %s, %s, %s) as cost",
            (provider, model, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens),
        )[0]
        return Decimal(row["cost"])

    def check_quota(
        self,
        organization_id: str,
        provider: str,
        model: str,
        estimated_cost: Decimal,
        user_id: str | None = None,
    ) -> list[QuotaCheck]:
        rows = self._rows(
            "select * from public.check_quota(%s, %s, %s, %s, %s)",
            (organization_id, provider, model, estimated_cost, user_id),
        )
        return [QuotaCheck.model_validate(_stringify_ids(r)) for r in rows]

    def get_quota_status(self, organization_id: str) -> list[QuotaStatus]:
        rows = self._rows("select * from public.get_quota_status(%s)", (organization_id,))
        return [QuotaStatus.model_validate(_stringify_ids(r)) for r in rows]

    def get_record(self, organization_id: str, request_id: str) -> UsageRecord | None:
        rows = self._rows(
            "select * from public.api_usage_logs where organization_id = %s and request_id = %s",
            (organization_id, request_id),
        )
        return record_from_row(rows[0]) if rows else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _stringify_ids(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_id") and v is not None and not isinstance(v, (int, str)):
            v = str(v)
        elif k.endswith("_ids") and isinstance(v, list):
            v = [str(x) for x in v]
        out[k] = v
    return out


def record_from_row(row: dict[str, Any]) -> UsageRecord:
    """A UsageRecord from an api_usage_logs row (dict)."""
    r = _stringify_ids(row)
    return UsageRecord(
        log_id=str(r["id"]),
        request_id=r["request_id"],
        organization_id=r["organization_id"],
        provider=r["provider"],
        model=r["model"],
        usage=Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cached_input_tokens=r["cached_input_tokens"],
            cache_write_tokens=r["cache_write_tokens"],
            reasoning_tokens=r["reasoning_tokens"],
            details=dict(r.get("usage_details") or {}),
            service_tier=r.get("service_tier"),
            estimated=r["usage_estimated"],
        ),
        cost=Decimal(r["cost_usd"]),
        credits=Decimal(r["credits"]),
        price_id=r["price_id"],
        priced_model=r.get("priced_model"),
        unpriced=bool(r.get("unpriced")),
        success=r["success"],
        user_id=r["user_id"],
        session_id=r["session_id"],
        workflow_id=r["workflow_id"],
        conversation_id=r["conversation_id"],
        latency_ms=r["latency_ms"],
        finish_reason=r["finish_reason"],
        error=r["error_message"],
        tags=list(r["tags"] or []),
        metadata=dict(r["metadata"] or {}),
        created_at=r["occurred_at"],
    )


# ---------------------------------------------------------------------------------------
# HTTP functions backend
# ---------------------------------------------------------------------------------------


def translate_http_error(response: httpx.Response) -> QuotaflowError:
    """Maps an error response of the HTTP functions to the exception tree."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(err, dict):
        err = {}
    message = str(err.get("message") or response.reason_phrase or "request failed")
    return error_for_http(response.status_code, message, err)


class HttpBackend:
    """Calls a quotaflow functions deployment at ``{url}/functions/v1/<name>``."""

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        url = url or os.environ.get("QUOTAFLOW_FUNCTIONS_URL") or os.environ.get("SUPABASE_URL")
        key = (
            key
            or os.environ.get("QUOTAFLOW_API_KEY")
            or os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
            or os.environ.get("SUPABASE_KEY")
        )
        if not url or not key:
            raise ConfigurationError(
                "HTTP backend needs a URL and a key: pass url/key or set SUPABASE_URL and"
                " SUPABASE_SERVICE_ROLE_KEY (or QUOTAFLOW_API_KEY)"
            )
        try:
            parts: httpx.URL | None = httpx.URL(url) if "://" in url else None
        except httpx.InvalidURL:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.host:
            raise ConfigurationError(
                "the functions URL must be an http(s) URL such as https://<ref>.supabase.co"
            )
        self._base = url.rstrip("/") + "/functions/v1/"
        self.identity = self._base
        self.targets = ("http:" + self._base,)
        connect = _seconds(None, "QUOTAFLOW_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout, connect=connect))
        self._headers = {"Authorization": f"Bearer {key}", "apikey": key}

    def resolve_targets(self) -> tuple[str, ...]:
        return self.targets

    def _call(
        self,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        method: str = "POST",
        params: dict[str, Any] | None = None,
    ) -> Any:
        def once() -> httpx.Response:
            return self._client.request(
                method, self._base + name, json=body, params=params, headers=self._headers
            )

        def transient(exc: Exception) -> bool:
            return isinstance(exc, httpx.TransportError)

        try:
            response = _retrying(once, transient)
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"functions unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise translate_http_error(response)
        return response.json()

    def reserve(
        self,
        organization_id: str,
        request_id: str,
        provider: str,
        model: str,
        *,
        estimated_cost: Decimal | None = None,
        input_tokens: int = 0,
        max_output_tokens: int = 0,
        user_id: str | None = None,
        ttl_seconds: int = 300,
    ) -> Reservation:
        body = {
            "organization_id": organization_id,
            "request_id": request_id,
            "provider": provider,
            "model": model,
            "estimated_cost": None if estimated_cost is None else str(estimated_cost),
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "user_id": user_id,
            "ttl_seconds": ttl_seconds,
        }
        return Reservation.model_validate(self._call("reserve", body))

    def record_usage(self, event: UsageEvent) -> RecordResult:
        return RecordResult.model_validate(self._call("track", event.model_dump(mode="json")))

    def record_usage_batch(
        self, events: Sequence[UsageEvent]
    ) -> list[RecordResult | QuotaflowError]:
        body = {"events": [e.model_dump(mode="json") for e in events]}
        out: list[RecordResult | QuotaflowError] = []
        for r in self._call("track", body)["results"]:
            err = r.get("error")
            if err:
                out.append(error_for_sqlstate(err.get("sqlstate", ""), err.get("message", ""), err))
            else:
                out.append(RecordResult.model_validate(r))
        return out

    def release(self, organization_id: str, request_id: str) -> bool:
        body = {"organization_id": organization_id, "request_id": request_id}
        return bool(self._call("release", body)["released"])

    def estimate_cost(
        self,
        provider: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        body = {
            "provider": provider,
            "model": model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
            "cache_write_tokens": cache_write_tokens,
        }
        return Decimal(str(self._call("estimate", body)["estimated_cost"]))

    def check_quota(
        self,
        organization_id: str,
        provider: str,
        model: str,
        estimated_cost: Decimal,
        user_id: str | None = None,
    ) -> list[QuotaCheck]:
        body = {
            "organization_id": organization_id,
            "provider": provider,
            "model": model,
            "estimated_cost": str(estimated_cost),
            "user_id": user_id,
        }
        return [QuotaCheck.model_validate(q) for q in self._call("check_quota", body)["quotas"]]

    def get_quota_status(self, organization_id: str) -> list[QuotaStatus]:
        data = self._call("quota_status", method="GET", params={"organization_id": organization_id})
        return [QuotaStatus.model_validate(q) for q in data["quotas"]]

    def get_record(self, organization_id: str, request_id: str) -> UsageRecord | None:
        try:
            data = self._call(
                "records",
                method="GET",
                params={"organization_id": organization_id, "request_id": request_id},
            )
        except ValidationError:
            return None
        records = data.get("records", [])
        return UsageRecord.model_validate(records[0]) if records else None

    def close(self) -> None:
        self._client.close()
