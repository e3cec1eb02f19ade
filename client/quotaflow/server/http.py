"""HTTP plumbing shared by the targets in :mod:`quotaflow.server.targets`: reading bodies,
authenticating, mapping errors to statuses (in :func:`error_reply`, the one place), the
per-process runtime, and the OpenAPI document built from the same declarations the targets
are parsed with.

A target is declared once::

    @functions_framework.http
    @endpoint(Op("POST", body=EstimateBody, response=EstimateResult), errors=(422,))
    def estimate(call: Call) -> Reply:
        ...

:func:`endpoint` checks the method (405 with ``Allow``), the body size (413), authenticates
the bearer credential (401), parses the body or query string with pydantic (400 with field
errors) and hands the handler a :class:`Call`; whatever the handler raises is mapped by
:func:`error_reply`. Nothing a client sends can produce a 500: a 500 is a bug and is logged.

The lazily created runtime — one connection pool per database URL — lives in this module, so
it is shared by every target in the process even though functions-framework executes its
source file once per target.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import flask
import pydantic
from pydantic import BaseModel, ConfigDict, TypeAdapter

from quotaflow import PostgresBackend, Tracker
from quotaflow.errors import (
    BackendUnavailableError,
    ConfigurationError,
    ProviderError,
    QuotaExceededError,
    QuotaflowError,
    ValidationError,
)
from quotaflow.outbox import default_outbox_path
from quotaflow.server.auth import (
    AuthConfig,
    AuthenticationError,
    Principal,
    authenticate,
    authorize,
)

log = logging.getLogger("quotaflow.functions")

MAX_BODY_BYTES = 1 << 20
"""Request bodies above 1 MiB are refused with 413 before they are parsed."""
MAX_JSON_INT = (1 << 63) - 1
"""Integers beyond Postgres bigint are refused with 400 wherever they appear in a body."""
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
    "Access-Control-Expose-Headers": "retry-after",
}

Reply = Any
"""What a handler returns: a pydantic model (200), ``(model, status)``, or a flask Response."""


# ---------------------------------------------------------------------------------------
# Errors: the one place that maps the exception tree to HTTP
# ---------------------------------------------------------------------------------------


class HttpError(Exception):
    """An HTTP-level refusal that is not a quotaflow error (405, 413, bad JSON)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})
        self.fields = fields


def item_error(exc: QuotaflowError) -> dict[str, Any]:
    """One failed item of a batch: what :func:`error_reply` would say, plus its SQLSTATE,
    from which HttpBackend.record_usage_batch rebuilds the same exception on the client."""
    return {**error_reply(exc)[0]["error"], "sqlstate": exc.sqlstate}


def field_errors(
    exc: pydantic.ValidationError, prefix: tuple[Any, ...] = ()
) -> list[dict[str, Any]]:
    """pydantic errors as ``[{"field": "a.b.0", "message": ..., "type": ...}]``."""
    return [
        {
            "field": ".".join(str(p) for p in (*prefix, *e["loc"])) or None,
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors(include_url=False, include_input=False)
    ]


_SERVER_MESSAGES = {
    503: "the database is unavailable; retry after Retry-After seconds",
    500: "internal error",
}
"""What a 5xx says: the cause stays in the server log, under the reply's correlation_id."""


def _database_internals(exc: BaseException) -> str | None:
    """The SQLSTATE of a Postgres error that Postgres itself raised (a constraint, a type's
    range) rather than a quotaflow function's ``raise exception``: its message names internal
    objects. None for anything else."""
    import psycopg

    cause = exc.__cause__
    if isinstance(cause, psycopg.Error) and cause.diag.source_function != "exec_stmt_raise":
        return cause.sqlstate or ""
    return None


def error_reply(exc: BaseException) -> tuple[dict[str, Any], int, dict[str, str]]:
    """``({"error": {"code", "message", ...}}, status, headers)`` for any exception.

    A client's mistake is a 4xx naming what was wrong. A fault of the server side (5xx but a
    provider's 502) says only a generic sentence and a ``correlation_id``; the cause goes to
    the server log under that id. A value the database itself refused (not one of quotaflow's
    own messages) is a 400 that does not quote the database's internal names."""
    if isinstance(exc, HttpError):
        return (
            {"error": {"code": exc.code, "message": str(exc), **exc.fields}},
            exc.status,
            exc.headers,
        )
    if isinstance(exc, pydantic.ValidationError):
        errors = field_errors(exc)
        summary = "; ".join(
            f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors
        )
        return (
            {
                "error": {
                    "code": "invalid_request",
                    "message": f"invalid request: {summary}",
                    "field": errors[0]["field"] if errors else None,
                    "errors": errors,
                }
            },
            400,
            {},
        )
    status = exc.http_status if isinstance(exc, QuotaflowError) else 500
    headers: dict[str, str] = {}
    if not isinstance(exc, QuotaflowError) or (status >= 500 and status != 502):
        correlation_id = uuid.uuid4().hex
        log.error("quotaflow function failed [correlation_id=%s]: %r", correlation_id, exc,
                  exc_info=exc)  # fmt: skip
        code = exc.code if isinstance(exc, QuotaflowError) else "internal_error"
        detail = {"code": code, "message": _SERVER_MESSAGES.get(status, "internal error"),
                  "correlation_id": correlation_id}  # fmt: skip
    else:
        detail = exc.to_dict()
        sqlstate = _database_internals(exc) if isinstance(exc, ValidationError) else None
        if sqlstate is not None:
            correlation_id = uuid.uuid4().hex
            log.warning("the database refused a request's value [correlation_id=%s]: %s",
                        correlation_id, exc)  # fmt: skip
            detail.update(
                message=f"a value of the request cannot be stored (database error {sqlstate})",
                correlation_id=correlation_id,
            )
    if isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    elif isinstance(exc, QuotaExceededError):
        # Only when waiting can help: the call fits the quota's limit once the window resets.
        if exc.reset_at is not None and not exc.exceeds_limit:
            seconds = (exc.reset_at - datetime.now(timezone.utc)).total_seconds()
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    elif isinstance(exc, ProviderError):
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(exc.retry_after)))
    elif isinstance(exc, BackendUnavailableError):
        headers["Retry-After"] = "1"
    return {"error": detail}, status, headers


# ---------------------------------------------------------------------------------------
# Settings and the per-process runtime
# ---------------------------------------------------------------------------------------


def setting(name: str) -> str | None:
    """A setting from the Flask app's config (set by ``quotaflow.server``), else the environment."""
    if flask.has_app_context():
        value = flask.current_app.config.get(name)
        if value:
            return str(value)
    return os.environ.get(name) or None


@dataclass(frozen=True)
class Settings:
    """Where the database is and which credentials are trusted, for the current request."""

    database_url: str | None
    auth: AuthConfig
    outbox_path: str | None = None
    """``QUOTAFLOW_OUTBOX_PATH``; default: one file per database next to the library's."""

    @classmethod
    def current(cls) -> Settings:
        return cls(
            database_url=setting("QUOTAFLOW_DATABASE_URL") or setting("DATABASE_URL"),
            auth=AuthConfig.from_env(setting),
            outbox_path=setting("QUOTAFLOW_OUTBOX_PATH"),
        )


@dataclass
class Runtime:
    """The process's Postgres backend (one lazily opened pool) and two Trackers over it.

    ``tracker`` runs ``execute``: when the database is unreachable at settle time, after the
    provider was paid, the usage goes to a durable outbox on this instance and is replayed.
    ``recorder`` records what clients send (``track``) without an outbox: a 503 leaves the
    event with the client, whose own outbox retries it.
    """

    backend: PostgresBackend
    tracker: Tracker
    recorder: Tracker


_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime(settings: Settings) -> Runtime:
    """The runtime for the configured database, created on first use and then reused."""
    url = settings.database_url
    if not url:
        raise ConfigurationError("no database: set QUOTAFLOW_DATABASE_URL or DATABASE_URL")
    with _runtimes_lock:
        rt = _runtimes.get(url)
        if rt is None:
            backend = PostgresBackend(url)
            outbox = settings.outbox_path or default_outbox_path()
            rt = _runtimes[url] = Runtime(
                backend,
                Tracker(backend=backend, outbox=outbox, providers=_provider_client()),
                Tracker(backend=backend, outbox=False),
            )
        return rt


def _provider_client() -> Any:
    """Provider keys and base URLs given in the app's config (``OPENAI_API_KEY``,
    ``QUOTAFLOW_OPENAI_BASE_URL``, ...); the environment supplies the rest."""
    from quotaflow.models import PROVIDERS
    from quotaflow.providers import ProviderClient, get_adapter

    keys: dict[str, str] = {}
    urls: dict[str, str] = {}
    if flask.has_app_context():
        config = flask.current_app.config
        for provider in PROVIDERS:
            adapter = get_adapter(provider)
            key = next((config[v] for v in adapter.api_key_env if config.get(v)), None)
            url = next((config[v] for v in adapter.base_url_env if config.get(v)), None)
            if key:
                keys[provider] = str(key)
            if url:
                urls[provider] = str(url)
    return ProviderClient(api_keys=keys, base_urls=urls)


def close_runtimes() -> None:
    """Closes every pool (tests, shutdown); the next request opens a new one."""
    with _runtimes_lock:
        runtimes = list(_runtimes.values())
        _runtimes.clear()
    for rt in runtimes:
        rt.tracker.close()
        rt.recorder.close()


# ---------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------


class In(BaseModel):
    """Base of request models: unknown fields are errors, camelCase names are accepted."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=None)


class Out(BaseModel):
    """Base of response models."""

    model_config = ConfigDict(extra="forbid")


class FieldError(Out):
    field: str | None
    message: str
    type: str


class ErrorDetail(BaseModel):
    """What went wrong. ``code`` is stable; the other fields depend on it."""

    model_config = ConfigDict(extra="allow")

    code: str
    """invalid_request, invalid_json, unauthorized, forbidden, organization_not_found,
    method_not_allowed, payload_too_large, pricing_not_found, idempotency_conflict,
    quota_exceeded, provider_error, backend_unavailable, ..."""
    message: str
    field: str | None = None
    """The first offending field (400)."""
    errors: list[FieldError] | None = None
    """Every offending field (400)."""
    sqlstate: str | None = None
    """Batch items: the database error class (QF001 quota, QF002 price, QF003 conflict, ...)."""
    quota_id: str | None = None
    quota_type: str | None = None
    metric: str | None = None
    quota_limit: str | None = None
    current_usage: str | None = None
    reserved: str | None = None
    remaining: str | None = None
    requested: str | None = None
    reset_at: str | None = None
    exceeds_limit: bool | None = None
    """429: the call needs more than the quota's whole limit (then there is no Retry-After)."""
    provider: str | None = None
    model: str | None = None
    status: int | None = None
    """The provider's HTTP status (502)."""
    retryable: bool | None = None
    correlation_id: str | None = None
    """5xx (and a value the database refused): find the cause in the server log by it."""


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {...}}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_values(value: Any) -> None:
    """Refuses what JSON allows but Postgres cannot store: NUL characters, unpaired
    surrogates, integers beyond bigint, numbers beyond a double. Iterative, so deep nesting
    cannot overflow the stack."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, bool):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(
                    f"{_dotted(path) or 'value'}: number out of range", field=_dotted(path)
                )
        elif isinstance(item, int):
            if not -MAX_JSON_INT - 1 <= item <= MAX_JSON_INT:
                raise ValidationError(
                    f"{_dotted(path) or 'value'}: integer out of range", field=_dotted(path)
                )
        elif isinstance(item, dict):
            for k, v in item.items():
                _check_string(k, (*path, k))
                stack.append((v, (*path, k)))
        elif isinstance(item, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(item))


def _check_string(s: str, path: tuple[Any, ...]) -> None:
    if "\x00" in s:
        raise ValidationError(
            f"{_dotted(path) or 'value'}: NUL characters are not allowed", field=_dotted(path)
        )
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{_dotted(path) or 'value'}: not valid Unicode (unpaired surrogate)",
            field=_dotted(path),
        ) from None


def _dotted(path: tuple[Any, ...]) -> str | None:
    return ".".join(str(p) for p in path) or None


def _too_large() -> HttpError:
    return HttpError(
        413,
        "payload_too_large",
        f"request body is larger than {MAX_BODY_BYTES} bytes",
        limit=MAX_BODY_BYTES,
    )


def read_body(request: flask.Request) -> bytes:
    """The raw request body, at most :data:`MAX_BODY_BYTES` (else 413, without reading on)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = request.stream.read(min(65536, MAX_BODY_BYTES + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A body as a JSON object whose values Postgres can store (else 400)."""
    if not raw.strip():
        raise HttpError(400, "invalid_json", "request body is empty: send a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_json_constant)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "invalid_json", "request body must be a JSON object")
    _check_values(data)
    return data


def read_query(request: flask.Request) -> dict[str, str]:
    """The query string (first value of each name), checked like body strings."""
    args = request.args.to_dict(flat=True)
    _check_values(args)
    return args


# ---------------------------------------------------------------------------------------
# Targets: declaration, the Call handed to handlers, and the endpoint decorator
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One method of a target: what it reads and what it answers."""

    method: str
    body: Any = None
    """A pydantic model (or any type TypeAdapter accepts) for the JSON body."""
    query: type[BaseModel] | None = None
    """A flat pydantic model for the query string."""
    response: Any = None
    """The 200 body's type."""
    select: Callable[[dict[str, Any]], Any] | None = None
    """For a union ``body``: picks the member to validate a body as (clearer errors)."""
    stream: Any = None
    """When 200 may also be ``text/event-stream``: the type of each event's JSON ``data``."""
    html: bool = False
    """When 200 may also be a ``text/html`` page (chosen by a query parameter)."""
    summary: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    ops: tuple[Op, ...]
    auth: bool
    description: str
    errors: tuple[int, ...]


TARGETS: dict[str, Target] = {}
"""Every declared target, in declaration order (the OpenAPI document's source)."""


@dataclass
class Call:
    """One request as a handler sees it: parsed, authenticated, with the runtime at hand."""

    request: flask.Request
    method: str
    settings: Settings
    principal: Principal | None
    body: Any = None
    query: Any = None
    _runtime: Runtime | None = field(default=None, repr=False)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = runtime(self.settings)
        return self._runtime

    @property
    def tracker(self) -> Tracker:
        return self.runtime.tracker

    @property
    def backend(self) -> PostgresBackend:
        return self.runtime.backend

    def authorize(self, organization_id: str, *, admin: bool = False) -> str:
        """The caller's role in the organization, or 403/404 (see ``quotaflow.auth.authorize``)."""
        if self.principal is None:
            raise AuthenticationError("this target needs a credential")
        return authorize(self.backend, self.principal, organization_id, admin=admin)


_adapters: dict[Any, TypeAdapter[Any]] = {}
_adapters_lock = threading.Lock()


def _adapter(tp: Any) -> TypeAdapter[Any]:
    """A TypeAdapter per declared type, built once (keyed by the type itself, not its id)."""
    with _adapters_lock:
        adapter = _adapters.get(tp)
        if adapter is None:
            adapter = _adapters[tp] = TypeAdapter(tp)
        return adapter


_ANY = TypeAdapter(Any)


def to_json(value: Any) -> Any:
    """A response value as JSON-ready data (Decimal as string, datetimes ISO 8601)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (dict, list)):
        return _ANY.dump_python(value, mode="json")
    return value


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> flask.Response:
    text = json.dumps(to_json(body), ensure_ascii=False, separators=(",", ":"))
    response = flask.Response(text, status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def _error_response(exc: BaseException, *, streamed: bool = False) -> flask.Response:
    body, status, headers = error_reply(exc)
    if not streamed:
        return json_response(body, status, headers)
    # A streamed body tells functions-framework not to drain the rest of the request, which
    # for a refused oversized upload could be anything.
    text = json.dumps(body, separators=(",", ":"))
    response = flask.Response(iter([text]), status=status, mimetype="application/json")
    response.headers.update(headers)
    return response


def endpoint(
    *ops: Op, auth: bool = True, errors: Iterable[int] = ()
) -> Callable[[Callable[[Call], Reply]], Callable[[flask.Request], flask.Response]]:
    """Declares a target (for the OpenAPI document) and wraps its handler with method
    dispatch, size limit, authentication, parsing and error mapping."""
    by_method = {op.method: op for op in ops}
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])
    allow = ", ".join([*by_method, "OPTIONS"])

    def decorate(handler: Callable[[Call], Reply]) -> Callable[[flask.Request], flask.Response]:
        name = handler.__name__
        TARGETS[name] = Target(name, ops, auth, (handler.__doc__ or "").strip(), tuple(errors))

        @functools.wraps(handler)
        def view(request: flask.Request) -> flask.Response:
            response = _dispatch(request, by_method, allow, auth, handler)
            response.headers.update(CORS_HEADERS)
            return response

        return view

    return decorate


def _dispatch(
    request: flask.Request,
    by_method: Mapping[str, Op],
    allow: str,
    auth: bool,
    handler: Callable[[Call], Reply],
) -> flask.Response:
    method = request.method.upper()
    if method == "OPTIONS":
        return flask.Response(
            status=204,
            headers={
                "Allow": allow,
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Max-Age": "86400",
            },
        )
    op = by_method.get(method)
    if op is None:
        return _error_response(
            HttpError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {allow}",
                headers={"Allow": allow},
            )
        )
    try:
        raw = read_body(request) if op.body is not None else b""
    except HttpError as exc:
        return _error_response(exc, streamed=exc.status == 413)
    except Exception as exc:
        return _error_response(exc)
    try:
        settings = Settings.current()
        call = Call(request, method, settings, None)
        if auth:
            call.principal = authenticate(
                request.headers.get("Authorization"), settings.auth, lambda: call.backend
            )
        if op.body is not None:
            data = parse_json_object(raw)
            model = op.select(data) if op.select is not None else op.body
            # Strict JSON validation: a string is no number and a number no date; JSON's own
            # conversions (string -> datetime, UUID, Decimal) still apply.
            call.body = _adapter(model).validate_json(raw, strict=True)
        if op.query is not None:
            call.query = op.query.model_validate(read_query(request))
        reply = handler(call)
    except Exception as exc:
        return _error_response(exc)
    if isinstance(reply, flask.Response):
        return reply
    if isinstance(reply, tuple):
        body, status = reply
        return json_response(body, status)
    return json_response(reply)


# ---------------------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------------------


def sse_event(data: Any) -> str:
    """One ``data:`` event (JSON on one line)."""
    return f"data: {json.dumps(to_json(data), ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_response(events: Iterator[str]) -> flask.Response:
    return flask.Response(
        events,
        status=200,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------------------------------
# OpenAPI 3.1
# ---------------------------------------------------------------------------------------

_STATUS_TEXT = {
    400: "Invalid request: the body or query does not validate (`errors` lists every field).",
    401: "Missing or invalid credential.",
    403: "The credential may not act on this organization, or needs an owner/admin.",
    404: "The organization does not exist.",
    409: "The request_id was recorded before with different content.",
    413: "The request body is larger than 1 MiB.",
    422: "No price is known for this provider and model.",
    429: "A hard quota refuses the call: `quota_type`, `quota_limit`, `current_usage`, "
    "`remaining`, `reset_at` say which and until when.",
    502: "The LLM provider failed; `status` is the provider's HTTP status.",
    503: "The database is unreachable; retry after `Retry-After` seconds.",
}


def openapi_document(
    server_url: str = "/functions/v1", *, title: str = "quotaflow functions", version: str = "0.1.0"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared target, schemas from the pydantic models."""
    inputs: list[tuple[Any, Any, TypeAdapter[Any]]] = [
        (("error",), "serialization", _adapter(ErrorBody))
    ]
    for t in TARGETS.values():
        for op in t.ops:
            if op.body is not None:
                inputs.append(((t.name, op.method, "body"), "validation", _adapter(op.body)))
            if op.query is not None:
                inputs.append(((t.name, op.method, "query"), "validation", _adapter(op.query)))
            if op.response is not None:
                inputs.append(
                    ((t.name, op.method, "response"), "serialization", _adapter(op.response))
                )
            if op.stream is not None:
                inputs.append(((t.name, op.method, "stream"), "serialization", _adapter(op.stream)))
    schemas, definitions = TypeAdapter.json_schemas(
        inputs, by_alias=False, ref_template="#/components/schemas/{model}"
    )
    components = dict(definitions.get("$defs", {}))
    error_ref = schemas[(("error",), "serialization")]

    def error_response(status: int) -> dict[str, Any]:
        return {
            "description": _STATUS_TEXT.get(status, "Error."),
            "content": {"application/json": {"schema": error_ref}},
        }

    paths: dict[str, Any] = {}
    for t in TARGETS.values():
        item: dict[str, Any] = {}
        for op in t.ops:
            statuses = set(t.errors)
            if t.auth:
                statuses |= {401, 403, 503}
            if op.body is not None or op.query is not None:
                statuses.add(400)
            if op.body is not None:
                statuses.add(413)
            operation: dict[str, Any] = {
                "operationId": f"{t.name}_{op.method.lower()}",
                "summary": op.summary or t.description.split("\n", 1)[0],
                "description": t.description,
                "tags": [t.name],
            }
            if not t.auth:
                operation["security"] = []
            if op.query is not None:
                operation["parameters"] = _query_parameters(
                    schemas[((t.name, op.method, "query"), "validation")], components
                )
            if op.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": schemas[((t.name, op.method, "body"), "validation")]
                        }
                    },
                }
            ok: dict[str, Any] = {"description": "Success."}
            if op.response is not None:
                ok["content"] = {
                    "application/json": {
                        "schema": schemas[((t.name, op.method, "response"), "serialization")]
                    }
                }
                if op.stream is not None:
                    ok["content"]["text/event-stream"] = {
                        # Before OpenAPI 3.2's itemSchema, `schema` describes one event.
                        "schema": {
                            "description": 'One server-sent event: `data: {"delta": "..."}` per '
                            'text chunk, then `data: {"done": true, ...response}` with usage and '
                            'cost, or `data: {"error": {...}}` if the stream broke.',
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "event": {"type": "string"},
                                "id": {"type": "string"},
                                "retry": {"type": "integer"},
                                "data": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "contentSchema": schemas[
                                        ((t.name, op.method, "stream"), "serialization")
                                    ],
                                },
                            },
                        },
                    }
            if op.html:
                ok.setdefault("content", {})["text/html"] = {"schema": {"type": "string"}}
            operation["responses"] = {
                "200": ok,
                **{str(s): error_response(s) for s in sorted(statuses)},
            }
            item[op.method.lower()] = operation
        paths[f"/{t.name}"] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Track, price and cap AI API calls. Every target lives at "
            '`/functions/v1/<name>`; errors are `{"error": {"code", "message", ...}}`.',
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A Supabase user JWT (member of the organization), the "
                    "service-role key, or an organization API key (qf_...).",
                }
            },
        },
    }


def _query_parameters(schema: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params
