"""quotaflow's HTTP functions (functions-framework targets), each a thin adapter from HTTP to
the ``quotaflow`` library: parse with pydantic, authenticate, call the library, reply.

Deploy one target: ``functions-framework --source=functions/main.py --target=execute``, where
``functions/main.py`` re-exports this module's targets; run
them all on one port under ``/functions/v1/<name>``: ``quotaflow serve``. Configuration (the
Flask app's config first — ``quotaflow.server`` puts its settings there — then the
environment): ``QUOTAFLOW_DATABASE_URL`` / ``DATABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``,
``SUPABASE_JWT_SECRET`` and/or ``SUPABASE_JWKS_URL``, ``QUOTAFLOW_JWT_AUDIENCE``, provider keys
and base URLs (``OPENAI_API_KEY``, ``QUOTAFLOW_OPENAI_BASE_URL``, ...; see
``quotaflow.providers``), ``QUOTAFLOW_OUTBOX_PATH``, ``QUOTAFLOW_PUBLIC_URL`` (the OpenAPI
document's server).

One connection pool per process and database, opened on first use; connections are always
returned (``with backend.connection()``). If the database is unreachable when ``execute``
settles — after the provider was paid — the usage waits in this instance's outbox and is
replayed (the response then says ``deferred: true``, ``cost: null``); ``track`` has no outbox:
its 503 leaves the event with the caller, whose own outbox retries.

Targets and who may call them (``Authorization: Bearer <credential>``)
---------------------------------------------------------------------

=============== ========= ==========================================================
target          method    access
=============== ========= ==========================================================
health          GET       anyone (database reachable?)
openapi         GET       anyone (this API's OpenAPI 3.1 document)
estimate        POST      any valid credential (prices are not organization data)
execute         POST      members of the organization; the service role; its API keys
check_quota     POST      members; the service role; API keys
quota_status    GET       members; the service role; API keys
records         GET       members; the service role; API keys
track           POST      owners/admins; the service role; API keys
reserve         POST      owners/admins; the service role; API keys
release         POST      owners/admins; the service role; API keys
usage_stats     GET, POST owners/admins; the service role; API keys — and a member for
                          ``type=user`` of their own user id
dashboard       GET       the page: anyone (it holds no organization data);
                          ``format=json``, its data: members; the service role; API keys
=============== ========= ==========================================================

Why: ``execute`` measures usage itself (the provider's own counts), so any member may spend
the organization's quota through it — as themselves: a member's ``context.user_id`` defaults
to their user id and may not name someone else (per-user quotas would be dodged). ``track``,
``reserve`` and ``release`` write the ledger with numbers the *caller* reports, so they take a
server credential (service role, the organization's API key) or an owner/admin. Reports of
the whole organization are for owners/admins (seed 003's admin API). The dashboard's data is
for every member: it shows what RLS already lets a member read (their organization's log
rows and quotas), and a browser cannot send a credential with a page load, so the page itself
is a data-free shell whose script fetches ``format=json`` with the credential it is given.

Errors are ``{"error": {"code", "message", ...}}``: 400 invalid body (``errors`` per field),
401, 403, 404 unknown organization, 409 request_id conflict, 413 body over 1 MiB, 422 no price,
429 quota exceeded (``quota_type``, ``quota_limit``, ``current_usage``, ``remaining``,
``reset_at``), 502 provider failure (``status``), 503 database unavailable.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from importlib import metadata
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import flask
import functions_framework
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from quotaflow import reports
from quotaflow._resources import read_text
from quotaflow.errors import (
    AuthorizationError,
    BackendUnavailableError,
    ConfigurationError,
    QuotaflowError,
    ValidationError,
)
from quotaflow.limits import Identifier, Metadata, ModelName, Tags
from quotaflow.models import (
    AIModelRequest,
    AIModelResponse,
    ExecutionContext,
    Message,
    Provider,
    QuotaCheck,
    QuotaStatus,
    RecordResult,
    Reservation,
    Usage,
    UsageEvent,
    UsageRecord,
    camel,
    normalise_provider,
)
from quotaflow.reports.summaries import (
    DEFAULT_REPORT_DAYS,
    MAX_BULK_REPORT_DAYS,
    MAX_REPORT_DAYS,
    MAX_TREND_DAYS,
)
from quotaflow.server.auth import ADMIN_ROLES, authenticate
from quotaflow.server.http import (
    UUID_PATTERN,
    Call,
    ErrorDetail,
    In,
    Op,
    Out,
    Reply,
    endpoint,
    error_reply,
    item_error,
    json_response,
    openapi_document,
    setting,
    sse_event,
    sse_response,
)
from quotaflow.tokens import count_message_tokens
from quotaflow.tracker import TrackedStream
from quotaflow.usage import extract_usage

__all__ = [
    "check_quota",
    "dashboard",
    "estimate",
    "execute",
    "health",
    "openapi",
    "quota_status",
    "records",
    "release",
    "reserve",
    "track",
    "usage_stats",
]
"""The targets: what ``functions/main.py`` re-exports with ``import *``."""

FUNCTIONS_PATH = "/functions/v1"
MAX_TOKENS = 10**12
"""Per call and kind of token: far above any real call, far below bigint."""
MAX_BATCH = 1000

OrgId = Annotated[
    str,
    Field(
        pattern=UUID_PATTERN,
        json_schema_extra={"format": "uuid"},
        description="The organization (UUID).",
    ),
]
RequestId = Identifier
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


def _version() -> str:
    try:
        return metadata.version("quotaflow")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# ---------------------------------------------------------------------------------------
# Models of bodies and answers (the library's models where they fit)
# ---------------------------------------------------------------------------------------


class OrganizationQuery(In):
    model_config = ConfigDict(extra="ignore")

    organization_id: OrgId


class HealthResult(Out):
    status: Literal["ok"]
    database: Literal["ok"]
    version: str


class EstimateBody(In):
    """Tokens × price: give ``messages`` (counted) or ``input_tokens``; ``output_tokens`` is
    the output to price (for an upper bound, the call's ``max_tokens``)."""

    provider: Annotated[str, Field(min_length=1, max_length=50)]
    model: ModelName
    messages: list[Message] | None = Field(default=None, min_length=1)
    input_tokens: Tokens | None = None
    """Prompt tokens; when absent they are counted from ``messages``."""
    output_tokens: Tokens = 0
    cached_input_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0


class EstimateResult(Out):
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    estimated_cost: Decimal
    """USD, priced in SQL from cost_estimates."""


class ExecuteContext(ExecutionContext):
    organization_id: OrgId


class StreamDelta(Out):
    """A chunk of generated text."""

    delta: str


class StreamDone(AIModelResponse):
    """The last event: the settled response (content, usage, cost, request_id, log_id)."""

    done: Literal[True] = True


class StreamFailure(Out):
    """The stream broke after it started; what was received is settled (usage estimated)."""

    error: ErrorDetail


StreamEvent = StreamDelta | StreamDone | StreamFailure


class ExecuteBody(In):
    """A call to make (seed 004's AIModelRequest) and whom it is for."""

    request: AIModelRequest
    context: ExecuteContext


class TrackUsage(Usage):
    input_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cached_input_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    reasoning_tokens: Tokens = 0


class TrackEvent(UsageEvent):
    """One settle event with normalised usage (the outbox's payload)."""

    organization_id: OrgId
    usage: TrackUsage = Field(default_factory=TrackUsage)
    latency_ms: int | None = Field(default=None, ge=0, le=2**31 - 1)


class TrackRaw(In):
    """A call made elsewhere, recorded from the provider's raw response (or stream events)."""

    organization_id: OrgId
    request_id: RequestId | None = None
    """Idempotency key; generated when absent (then a retry records the call again)."""
    provider: Provider
    model: ModelName
    response: dict[str, Any] | list[Any]
    """The provider's JSON response, or the list of its stream events."""
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    workflow_id: Identifier | None = None
    conversation_id: Identifier | None = None
    latency_ms: int | None = Field(default=None, ge=0, le=2**31 - 1)
    tags: Tags = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("provider", mode="before")
    @classmethod
    def _norm_provider(cls, v: Any) -> Any:
        return normalise_provider(v) if isinstance(v, str) else v


class TrackBatch(In):
    """Several settle events; recorded in order, each idempotent by request_id."""

    events: list[TrackEvent] = Field(min_length=1, max_length=MAX_BATCH)


class TrackItemFailure(Out):
    """An event of a batch that was not recorded (the others were)."""

    error: ErrorDetail


class TrackBatchResult(Out):
    results: list[RecordResult | TrackItemFailure]
    """One per event, in order: its record, or why it was refused."""


def _track_kind(data: dict[str, Any]) -> type[TrackEvent | TrackRaw | TrackBatch]:
    if "events" in data:
        return TrackBatch
    if "response" in data:
        return TrackRaw
    return TrackEvent


class ReserveBody(In):
    organization_id: OrgId
    request_id: RequestId
    provider: Annotated[str, Field(min_length=1, max_length=50)]
    model: ModelName
    estimated_cost: Money | None = None
    """USD to hold; when absent, input_tokens + max_output_tokens priced from cost_estimates."""
    input_tokens: Tokens = 0
    max_output_tokens: Tokens = 0
    user_id: Identifier | None = None
    ttl_seconds: int = Field(default=300, ge=1, le=86400)


class ReleaseBody(In):
    organization_id: OrgId
    request_id: RequestId


class ReleaseResult(Out):
    released: bool
    """False when nothing was pending for this request_id."""


class CheckQuotaBody(In):
    organization_id: OrgId
    provider: Annotated[str, Field(min_length=1, max_length=50)]
    model: ModelName
    estimated_cost: Money = Decimal(0)
    user_id: Identifier | None = None


class QuotaCheckList(Out):
    quotas: list[QuotaCheck]
    """One row per applicable quota, binding ones first; empty: no quota applies."""


class QuotaStatusList(Out):
    quotas: list[QuotaStatus]


class RecordsQuery(OrganizationQuery):
    request_id: RequestId


class RecordList(Out):
    records: list[UsageRecord]


StatsType = Literal["overview", "user", "organization", "trends", "model-performance"]


_instant = TypeAdapter(datetime)


def _date_or_datetime(value: Any) -> Any:
    """``2026-11-01`` is a (local) day, anything longer an instant (ISO 8601)."""
    if isinstance(value, str):
        return date.fromisoformat(value) if len(value) == 10 else _instant.validate_python(value)
    return value


def _plausible_day(value: date | datetime | None) -> date | datetime | None:
    if value is not None and not 1970 <= value.year <= 2999:
        raise ValueError("dates must be between the years 1970 and 2999")
    return value


DayOrInstant = Annotated[datetime | date, BeforeValidator(_date_or_datetime)]


class StatsFilter(In):
    """One report (seed 003): ``overview``, ``user`` (needs user_id), ``organization``,
    ``trends`` (``days``, default 30) or ``model-performance``. Dates are whole days in the
    organization's time zone (end included); date-times are instants (end excluded). Without
    ``end_date`` the period ends now; without ``start_date`` it is the 30 days before its end.
    One report covers at most 400 days; a bulk request at most 2,000 days in all."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=camel)

    type: StatsType = "overview"
    user_id: Identifier | None = None
    start_date: DayOrInstant | None = None
    end_date: DayOrInstant | None = None
    days: int | None = Field(default=None, ge=1, le=MAX_TREND_DAYS)

    @field_validator("start_date", "end_date")
    @classmethod
    def _plausible_dates(cls, v: date | datetime | None) -> date | datetime | None:
        return _plausible_day(v)

    @model_validator(mode="after")
    def _user_needs_id(self) -> StatsFilter:
        if self.type == "user" and self.user_id is None:
            raise ValueError("type=user needs user_id")
        return self

    def period(self, now: datetime) -> tuple[date | datetime, date | datetime]:
        """The bounds the report runs with: the defaults applied."""
        end = self.end_date if self.end_date is not None else now
        if self.start_date is not None:
            return self.start_date, end
        if isinstance(end, datetime):
            return end - timedelta(days=DEFAULT_REPORT_DAYS), end
        return end - timedelta(days=DEFAULT_REPORT_DAYS - 1), end

    def span_days(self, now: datetime) -> int:
        """The days the report covers, as the limits count them: calendar days for dates (end
        included), started days for instants."""
        if self.type == "trends":
            return self.days or DEFAULT_REPORT_DAYS
        start, end = self.period(now)
        if isinstance(start, datetime) or isinstance(end, datetime):
            seconds = (_as_instant(end) - _as_instant(start)).total_seconds()
            return math.ceil(seconds / 86400)
        return (end - start).days + 1


def _as_instant(value: date | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)


class UsageStatsQuery(StatsFilter):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=camel)

    organization_id: OrgId


class UsageStatsBulk(In):
    """Several reports in one request, as seed 003's admin API."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=camel)

    type: Literal["bulk"] = "bulk"
    organization_id: OrgId
    filters: list[StatsFilter] = Field(min_length=1, max_length=20)


Report = (
    reports.OverviewReport
    | reports.UserReport
    | reports.OrganizationReport
    | reports.TrendsReport
    | reports.ModelPerformanceReport
)


class UsageStatsResult(Out):
    type: StatsType
    data: Report


class UsageStatsBulkResult(Out):
    type: Literal["bulk"]
    organization_id: str
    results: list[UsageStatsResult]


class DashboardQuery(OrganizationQuery):
    format: Literal["html", "json"] = Field(
        default="html",
        description="html: the page (no organization data; no credential needed); json: the "
        "data it draws (needs a credential).",
    )


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------


HEALTH_TIMEOUT = 1.0
"""Seconds /health waits for a pooled connection before it answers 503."""


@functions_framework.http
@endpoint(Op("GET", response=HealthResult), auth=False, errors=(503,))
def health(call: Call) -> Reply:
    """Liveness and database reachability (503 when the database cannot be reached), within
    about a second when the pool is busy and the connect timeout when the database is down."""
    try:
        with call.backend.connection(timeout=HEALTH_TIMEOUT) as conn:
            conn.execute("select 1")
    except BackendUnavailableError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(f"database unavailable: {exc}") from exc
    return HealthResult(status="ok", database="ok", version=_version())


@functions_framework.http
@endpoint(Op("GET", response=dict[str, Any]), auth=False)
def openapi(call: Call) -> Reply:
    """This API's OpenAPI 3.1 document. Its ``servers`` entry is ``QUOTAFLOW_PUBLIC_URL`` +
    ``/functions/v1`` when that is configured, else the relative ``/functions/v1`` — never
    taken from the request's Host header."""
    return openapi_document(public_functions_url(), version=_version())


def public_functions_url() -> str:
    """Where clients reach the functions, from configuration only."""
    public = setting("QUOTAFLOW_PUBLIC_URL")
    if not public:
        return FUNCTIONS_PATH
    parts = urlsplit(public)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"QUOTAFLOW_PUBLIC_URL must be an http(s) base URL such as https://<ref>.supabase.co,"
            f" got {public!r}"
        )
    return public.rstrip("/") + FUNCTIONS_PATH


@functions_framework.http
@endpoint(Op("POST", body=EstimateBody, response=EstimateResult), errors=(422,))
def estimate(call: Call) -> Reply:
    """What a call costs: tokens (given, or counted from messages) × the model's price."""
    b: EstimateBody = call.body
    provider = normalise_provider(b.provider)
    input_tokens = b.input_tokens
    if input_tokens is None:
        messages = [m.model_dump() for m in b.messages or []]
        input_tokens = count_message_tokens(provider, b.model, messages) if messages else 0
    cost = call.backend.estimate_cost(
        provider,
        b.model,
        input_tokens,
        b.output_tokens,
        b.cached_input_tokens,
        b.cache_write_tokens,
    )
    return EstimateResult(
        provider=provider,
        model=b.model,
        input_tokens=input_tokens,
        output_tokens=b.output_tokens,
        cached_input_tokens=b.cached_input_tokens,
        cache_write_tokens=b.cache_write_tokens,
        estimated_cost=cost,
    )


@functions_framework.http
@endpoint(
    Op("POST", body=ExecuteBody, response=AIModelResponse, stream=StreamEvent),
    errors=(404, 409, 422, 429, 502),
)
def execute(call: Call) -> Reply:
    """Estimate, reserve, call the provider, settle: the AIModelResponse, or server-sent events
    when ``request.stream`` is true. 429 before anything is sent when a hard quota refuses."""
    b: ExecuteBody = call.body
    context = b.context
    role = call.authorize(context.organization_id)
    principal = call.principal
    if principal is not None and principal.kind == "user":
        if context.user_id is None:
            context = context.model_copy(update={"user_id": principal.user_id})
        elif context.user_id != principal.user_id and role not in ADMIN_ROLES:
            raise AuthorizationError(
                "members execute as themselves: leave context.user_id out or set it to your user id"
            )
    result = call.tracker.execute_with_tracking(b.request, context)
    if not b.request.stream:
        return result
    return sse_response(_stream_events(result))


def _stream_events(result: TrackedStream | AIModelResponse) -> Iterator[str]:
    """Text deltas, then the settled response; the stream settles even if the client leaves."""
    if isinstance(result, AIModelResponse):  # a replayed request_id: nothing streams
        yield sse_event(StreamDone(**result.model_dump()))
        return
    try:
        for chunk in result:
            yield sse_event(StreamDelta(delta=chunk))
        if result.response is not None:
            yield sse_event(StreamDone(**result.response.model_dump()))
    except QuotaflowError as exc:
        yield sse_event(StreamFailure(error=ErrorDetail(**error_reply(exc)[0]["error"])))
    finally:
        result.close()


@functions_framework.http
@endpoint(
    Op(
        "POST",
        body=TrackEvent | TrackRaw | TrackBatch,
        select=_track_kind,
        response=RecordResult | TrackBatchResult,
    ),
    errors=(404, 409, 422),
)
def track(call: Call) -> Reply:
    """Records usage: a normalised event (the outbox's payload), a provider's raw response, or
    ``{"events": [...]}`` (one round trip; each result is the event's record or its error).
    Idempotent by request_id; a changed replay is 409."""
    body = call.body
    if isinstance(body, TrackBatch):
        for org in dict.fromkeys(e.organization_id for e in body.events):
            call.authorize(org, admin=True)
        results = [
            r
            if isinstance(r, RecordResult)
            else TrackItemFailure(error=ErrorDetail.model_validate(item_error(r)))
            for r in call.backend.record_usage_batch(body.events)
        ]
        return TrackBatchResult(results=results)
    call.authorize(body.organization_id, admin=True)
    if isinstance(body, TrackEvent):
        return call.backend.record_usage(body)
    try:
        TrackUsage.model_validate(extract_usage(body.provider, body.response).model_dump())
    except QuotaflowError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise _invalid_response(exc) from exc
    context = body.model_dump(
        include={
            "organization_id",
            "request_id",
            "user_id",
            "session_id",
            "workflow_id",
            "conversation_id",
            "tags",
            "metadata",
        }
    )
    record = call.runtime.recorder.track_usage(
        context, body.provider, body.model, body.response, latency_ms=body.latency_ms
    )
    return RecordResult.model_validate(
        {
            "log_id": record.log_id,
            "cost_usd": record.cost,
            "credits": record.credits,
            "price_id": record.price_id,
            "duplicate": record.duplicate,
            "unpriced": record.unpriced,
        }
    )


def _invalid_response(exc: Exception) -> QuotaflowError:
    return ValidationError(f"cannot read the usage in response: {exc}", field="response")


@functions_framework.http
@endpoint(Op("POST", body=ReserveBody, response=Reservation), errors=(404, 409, 422, 429))
def reserve(call: Call) -> Reply:
    """Holds a call's upper-bound estimate on every applicable quota, or 429."""
    b: ReserveBody = call.body
    call.authorize(b.organization_id, admin=True)
    return call.backend.reserve(
        b.organization_id,
        b.request_id,
        b.provider,
        b.model,
        estimated_cost=b.estimated_cost,
        input_tokens=b.input_tokens,
        max_output_tokens=b.max_output_tokens,
        user_id=b.user_id,
        ttl_seconds=b.ttl_seconds,
    )


@functions_framework.http
@endpoint(Op("POST", body=ReleaseBody, response=ReleaseResult), errors=(404,))
def release(call: Call) -> Reply:
    """Frees a pending reservation whose call never happened."""
    b: ReleaseBody = call.body
    call.authorize(b.organization_id, admin=True)
    return ReleaseResult(released=call.backend.release(b.organization_id, b.request_id))


@functions_framework.http
@endpoint(Op("POST", body=CheckQuotaBody, response=QuotaCheckList), errors=(404,))
def check_quota(call: Call) -> Reply:
    """Read-only: would a call of this estimated cost be admitted? One row per quota."""
    b: CheckQuotaBody = call.body
    call.authorize(b.organization_id)
    return QuotaCheckList(
        quotas=call.tracker.check_quota(
            b.organization_id, b.provider, b.model, b.estimated_cost, b.user_id
        )
    )


@functions_framework.http
@endpoint(Op("GET", query=OrganizationQuery, response=QuotaStatusList), errors=(404,))
def quota_status(call: Call) -> Reply:
    """Every quota of the organization: limit, usage, reserved, remaining, reset time."""
    q: OrganizationQuery = call.query
    call.authorize(q.organization_id)
    return QuotaStatusList(quotas=call.tracker.get_quota_status(q.organization_id))


@functions_framework.http
@endpoint(Op("GET", query=RecordsQuery, response=RecordList), errors=(404,))
def records(call: Call) -> Reply:
    """The usage record of one request_id (an empty list when none was recorded)."""
    q: RecordsQuery = call.query
    call.authorize(q.organization_id)
    record = call.backend.get_record(q.organization_id, q.request_id)
    return RecordList(records=[] if record is None else [record])


@functions_framework.http
@endpoint(
    Op(
        "GET",
        query=UsageStatsQuery,
        response=UsageStatsResult,
        summary="One usage report of an organization.",
    ),
    Op(
        "POST",
        body=UsageStatsBulk,
        response=UsageStatsBulkResult,
        summary="Several usage reports in one request (bulk).",
    ),
    errors=(404,),
)
def usage_stats(call: Call) -> Reply:
    """Usage reports (seed 003): overview, user, organization, trends, model-performance."""
    now = datetime.now(timezone.utc)
    if call.method == "POST":
        bulk: UsageStatsBulk = call.body
        _check_periods(bulk.filters, now)
        _authorize_stats(call, bulk.organization_id, bulk.filters)
        return UsageStatsBulkResult(
            type="bulk",
            organization_id=bulk.organization_id,
            results=[_report(call, bulk.organization_id, f, now) for f in bulk.filters],
        )
    q: UsageStatsQuery = call.query
    _check_periods([q], now)
    _authorize_stats(call, q.organization_id, [q])
    return _report(call, q.organization_id, q, now)


def _check_periods(filters: list[StatsFilter], now: datetime) -> None:
    """Bounded work: each report at most MAX_REPORT_DAYS, a bulk request MAX_BULK_REPORT_DAYS."""
    spans = [f.span_days(now) for f in filters]
    for i, span in enumerate(spans):
        where = f"filters.{i}." if len(filters) > 1 else ""
        if span > MAX_REPORT_DAYS:
            raise ValidationError(
                f"the report covers {span} days; one report covers at most {MAX_REPORT_DAYS}"
                " days: narrow start_date/end_date",
                field=f"{where}start_date",
            )
    if sum(spans) > MAX_BULK_REPORT_DAYS:
        raise ValidationError(
            f"the reports cover {sum(spans)} days in all; one bulk request covers at most"
            f" {MAX_BULK_REPORT_DAYS} days: split it",
            field="filters",
        )


def _authorize_stats(call: Call, organization_id: str, filters: list[StatsFilter]) -> None:
    """Owners/admins and keys see everything; a member only ``type=user`` of themselves."""
    try:
        call.authorize(organization_id, admin=True)
    except AuthorizationError:
        principal = call.principal
        own = principal is not None and all(
            f.type == "user" and f.user_id == principal.user_id for f in filters
        )
        if not own:
            raise
        call.authorize(organization_id)


def _report(call: Call, org: str, f: StatsFilter, now: datetime) -> UsageStatsResult:
    db = call.backend
    data: Any
    if f.type == "trends":
        data = reports.trends(
            db, org, days=f.days or DEFAULT_REPORT_DAYS, start=f.start_date, end=f.end_date,
            user_id=f.user_id,
        )  # fmt: skip
        return UsageStatsResult(type=f.type, data=data)
    start, end = f.period(now)
    if f.type == "user":
        assert f.user_id is not None
        data = reports.user_report(db, org, f.user_id, start=start, end=end)
    elif f.type == "organization":
        data = reports.organization_report(db, org, start=start, end=end)
    elif f.type == "model-performance":
        data = reports.model_performance(db, org, start=start, end=end, user_id=f.user_id)
    else:
        data = reports.overview(db, org, start=start, end=end, user_id=f.user_id)
    return UsageStatsResult(type=f.type, data=data)


@functions_framework.http
@endpoint(
    Op(
        "GET",
        query=DashboardQuery,
        response=reports.DashboardReport,
        html=True,
        summary="An organization's usage dashboard: the page, or (format=json) its data.",
    ),
    auth=False,
    errors=(401, 403, 404, 503),
)
def dashboard(call: Call) -> Reply:
    """The organization's usage dashboard: spend per day (last 30 local days), by model and by
    user, every quota, the 20 most recent calls. ``format=html`` (default) is the page, served
    to anyone and holding no organization data: its script takes the credential from the URL
    fragment (``#access_token=...``) or a form and fetches ``format=json``, which needs
    ``Authorization: Bearer`` of a member, the service role or an organization API key."""
    q: DashboardQuery = call.query
    if q.format == "html":
        page, csp = _dashboard_page()
        return flask.Response(
            page,
            mimetype="text/html",
            headers={
                "Content-Security-Policy": csp,
                "Cache-Control": "no-cache",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
            },
        )
    call.principal = authenticate(
        call.request.headers.get("Authorization"), call.settings.auth, lambda: call.backend
    )
    call.authorize(q.organization_id)
    return json_response(
        reports.dashboard(call.backend, q.organization_id),
        headers={"Cache-Control": "no-store", "Vary": "Authorization"},
    )


@functools.cache
def _dashboard_page() -> tuple[str, str]:
    """The page and its Content-Security-Policy: nothing but its own inline script and style
    (allowed by hash) and requests to its own origin."""
    page = read_text("server", "dashboard.html")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
        return " ".join(f"'sha256-{d}'" for d in digests)

    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {hashes('script')}",
            f"style-src {hashes('style')}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return page, csp
