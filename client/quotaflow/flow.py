"""The flow of every tracked call: estimate -> reserve -> call -> settle, without I/O.

Each flow is a generator that *yields steps* (reserve, call the provider, settle, ...) and
receives their results. The trackers' drivers run the steps: ``quotaflow._async.tracker``
awaits them and ``quotaflow._sync.tracker``, generated from it, blocks. What both trackers
share (configuration, the outbox, turning results into records) is :class:`TrackerBase`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError as PydanticValidationError

from .backends import Backend, HttpBackend, PostgresBackend, database_url_from_env
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    ProviderError,
    QuotaflowError,
    TrackingError,
    ValidationError,
)
from .models import (
    AIModelRequest,
    AIModelResponse,
    ExecutionContext,
    RecordResult,
    Reservation,
    Usage,
    UsageEvent,
    UsageRecord,
    normalise_provider,
)
from .outbox import Outbox, default_outbox_path
from .providers import get_adapter
from .reports.analytics import AlertsMixin
from .tokens import count_message_tokens
from .usage import UsageAccumulator, extract_usage, to_plain

log = logging.getLogger("quotaflow")

T = TypeVar("T")

DEFAULT_MAX_TOKENS = 1024
"""Output cap sent to the provider when a request names none, so the reservation is a bound."""
DEFAULT_RESERVATION_TTL = 300

UsageCallback = Callable[[UsageRecord], Any]


# ---------------------------------------------------------------------------------------
# Steps: what the flows ask their driver to do
# ---------------------------------------------------------------------------------------


@dataclass
class _Call:
    request: AIModelRequest
    context: ExecutionContext
    request_id: str
    prompt_tokens: int
    max_output_tokens: int
    """What the provider may bill as output for this request: its cap times its choices."""
    started: float = field(default_factory=time.perf_counter)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def elapsed_ms(self) -> int:
        return int((time.perf_counter() - self.started) * 1000)


@dataclass
class _Reserve:
    call: _Call


@dataclass
class _Release:
    call: _Call


@dataclass
class _GetRecord:
    call: _Call


@dataclass
class _Provider:
    call: _Call
    stream: bool = False


@dataclass
class _UserCall:
    fn: Callable[[], Any]


@dataclass
class _Settle:
    event: UsageEvent


_Step = _Reserve | _Release | _GetRecord | _Provider | _UserCall | _Settle
Flow = Generator[_Step, Any, T]


def _as_request(request: AIModelRequest | dict[str, Any]) -> AIModelRequest:
    try:
        return AIModelRequest.model_validate(request)
    except PydanticValidationError as exc:
        loc = exc.errors()[0]["loc"] if exc.errors() else ()
        field = ".".join(["request", *map(str, loc)])
        raise ValidationError(f"invalid request: {exc}", field=field) from exc


def _as_context(context: ExecutionContext | dict[str, Any]) -> ExecutionContext:
    try:
        return ExecutionContext.model_validate(context)
    except Exception as exc:
        raise ValidationError(f"invalid context: {exc}", field="context") from exc


def _prepare(
    request: AIModelRequest | dict[str, Any], context: ExecutionContext | dict[str, Any]
) -> _Call:
    req = _as_request(request)
    ctx = _as_context(context)
    if req.max_tokens is None:
        req = req.model_copy(update={"max_tokens": DEFAULT_MAX_TOKENS})
    messages = [m.model_dump() for m in req.messages]
    # Bounded from the body the provider will receive (``extra`` merged), so no request field
    # can make the call bill more output than the reservation holds.
    adapter = get_adapter(req.provider, req.api)
    return _Call(
        request=req,
        context=ctx,
        request_id=ctx.request_id or str(uuid.uuid4()),
        prompt_tokens=count_message_tokens(req.provider, req.model, messages),
        max_output_tokens=adapter.output_bound(adapter.build_request(req).json),
    )


def _event(
    call: _Call,
    *,
    usage: Usage,
    success: bool,
    finish_reason: str | None = None,
    error: BaseException | None = None,
) -> UsageEvent:
    ctx = call.context
    return UsageEvent(
        organization_id=ctx.organization_id,
        request_id=call.request_id,
        provider=call.request.provider,
        model=call.request.model,
        usage=usage,
        success=success,
        user_id=ctx.user_id,
        session_id=ctx.session_id,
        workflow_id=ctx.workflow_id,
        conversation_id=ctx.conversation_id,
        latency_ms=call.elapsed_ms(),
        finish_reason=finish_reason,
        error_code=None if error is None else _error_code(error),
        error_message=None if error is None else str(error)[:2000],
        tags=ctx.tags,
        metadata=ctx.metadata,
        occurred_at=call.occurred_at,
    )


def _error_code(error: BaseException) -> str:
    if isinstance(error, ProviderError) and error.status is not None:
        return f"http_{error.status}"
    return getattr(error, "code", None) or type(error).__name__


def _response(
    call: _Call, content: str, usage: Usage, finish_reason: str | None, record: UsageRecord
) -> AIModelResponse:
    return AIModelResponse(
        content=content,
        usage=usage,
        cost=record.cost,
        credits=record.credits,
        model=call.request.model,
        provider=call.request.provider,
        request_id=call.request_id,
        log_id=record.log_id,
        latency_ms=call.elapsed_ms(),
        finish_reason=finish_reason,
        duplicate=record.duplicate,
        deferred=record.deferred,
    )


def _replayed(call: _Call, record: UsageRecord | None) -> AIModelResponse:
    if record is None:
        raise QuotaflowError(f"request {call.request_id} is recorded but its record is unreadable")
    return AIModelResponse(
        content="",
        usage=record.usage,
        cost=record.cost,
        credits=record.credits,
        model=record.model,
        provider=record.provider,
        request_id=call.request_id,
        log_id=record.log_id,
        latency_ms=record.latency_ms or 0,
        finish_reason=record.finish_reason,
        duplicate=True,
    )


# ---------------------------------------------------------------------------------------
# The flows, written once
# ---------------------------------------------------------------------------------------


def _execute_flow(call: _Call) -> Flow[AIModelResponse]:
    reservation: Reservation = yield _Reserve(call)
    if reservation.status == "recorded":
        # The same request_id was settled before: charge nothing, call nothing.
        return _replayed(call, (yield _GetRecord(call)))
    try:
        result = yield _Provider(call)
    except ProviderError as exc:
        yield _Settle(_event(call, usage=Usage(), success=False, error=exc))
        raise
    except BaseException:
        yield _Release(call)
        raise
    record: UsageRecord = yield _Settle(
        _event(call, usage=result.usage, success=True, finish_reason=result.finish_reason)
    )
    response = _response(call, result.content, result.usage, result.finish_reason, record)
    if result.embeddings is not None:
        response.embeddings = result.embeddings
    return response


def _open_stream_flow(call: _Call) -> Flow[Any]:
    reservation: Reservation = yield _Reserve(call)
    if reservation.status == "recorded":
        return _replayed(call, (yield _GetRecord(call)))
    try:
        return (yield _Provider(call, stream=True))
    except ProviderError as exc:
        yield _Settle(_event(call, usage=Usage(), success=False, error=exc))
        raise
    except BaseException:
        yield _Release(call)
        raise


def _sdk_error(call: _Call, exc: BaseException) -> ProviderError:
    """An SDK's exception as the ProviderError its failure row records."""
    if isinstance(exc, ProviderError):
        return exc
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    return ProviderError(
        str(exc), provider=call.request.provider, status=status if isinstance(status, int) else None
    )


def _wrap_flow(call: _Call, fn: Callable[[], Any]) -> Flow[tuple[Any, UsageRecord | None]]:
    """Runs the app's own SDK call under a reservation. A stream comes back with no record:
    the driver wraps it, and the wrapper settles when the stream ends."""
    reservation: Reservation = yield _Reserve(call)
    if reservation.status == "recorded":
        raise ValidationError(
            f"request_id {call.request_id} was already recorded; use a new id for a new call",
            field="request_id",
        )
    try:
        raw = yield _UserCall(fn)
    except BaseException as exc:
        yield _Settle(_event(call, usage=Usage(), success=False, error=_sdk_error(call, exc)))
        raise
    if is_sdk_stream(raw):
        return raw, None
    record: UsageRecord = yield _Settle(
        _event(
            call, usage=_wrapped_usage(call, raw), success=True, finish_reason=_finish_reason(raw)
        )
    )
    return raw, record


def _wrapped_usage(call: _Call, raw: Any) -> Usage:
    """The usage the response reports, else an estimate flagged ``estimated=True`` (the
    provider answered and billed: the hold is settled either way)."""
    provider = call.request.provider
    try:
        return extract_usage(provider, raw)
    except ValidationError as exc:
        log.warning("request %s: %s; recording an estimate", call.request_id, exc)
    text = ""
    data = to_plain(raw)
    if isinstance(data, Mapping):
        try:
            text = get_adapter(provider, call.request.api)._extract(data)[0]
        except Exception:  # an unfamiliar shape: the estimate counts no output text
            text = ""
    return UsageAccumulator(provider).result(
        output_text=text, prompt_tokens_estimate=call.prompt_tokens
    )


ASYNC_STREAM_GIVEN = "an async SDK stream or manager: wrap it with AsyncTracker"


def is_sdk_stream(raw: Any) -> bool:
    """An SDK stream (an iterator of events) or stream manager (a context manager that opens
    one), as opposed to a whole response."""
    if isinstance(raw, (Mapping, str, bytes, bytearray, Sequence)) or hasattr(raw, "model_dump"):
        return False
    return any(hasattr(raw, n) for n in ("__next__", "__anext__", "__enter__", "__aenter__"))


class SdkStreamTap:
    """What a wrapped SDK stream delivered: each event (SDK object or dict) folded into the
    provider's usage and the text received, so that it settles from the provider's own final
    usage, or from a flagged estimate when the stream was abandoned, cut or carried none."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.provider = call.request.provider
        self._adapter = get_adapter(self.provider, call.request.api)
        self._usage = UsageAccumulator(self.provider)
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self.settled = False

    def feed(self, event: Any) -> None:
        try:
            data = to_plain(event)
            if not isinstance(data, Mapping):
                return
            self._usage.add(data)
        except QuotaflowError:  # an event it cannot read: the app's stream goes on
            log.debug("request %s: unreadable stream event", self.call.request_id)
            return
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith("response.") and self._adapter.api == "chat":
            self._adapter = get_adapter(self.provider, "responses")
        try:
            update = self._adapter.parse_stream_event(data, kind if isinstance(kind, str) else None)
        except Exception:  # the SDK raises its own in-stream errors; text is best effort
            return
        if update.text:
            self._parts.append(update.text)
        if update.finish_reason:
            self._finish_reason = update.finish_reason

    def event(self, error: BaseException | None) -> UsageEvent:
        """The settle event: the stream ended (``error`` None) or broke with ``error``."""
        usage = self._usage.result(
            output_text="".join(self._parts), prompt_tokens_estimate=self.call.prompt_tokens
        )
        if error is None:
            return _event(self.call, usage=usage, success=True, finish_reason=self._finish_reason)
        return _event(
            self.call,
            usage=usage,
            success=False,
            finish_reason=self._finish_reason,
            error=_sdk_error(self.call, error),
        )


def _finish_reason(raw: Any) -> str | None:
    paths: tuple[tuple[Any, ...], ...] = (
        ("choices", 0, "finish_reason"),
        ("stop_reason",),
        ("candidates", 0, "finish_reason"),
        ("candidates", 0, "finishReason"),
        ("status",),
    )
    for path in paths:
        v: Any = raw
        for key in path:
            try:
                v = v[key] if isinstance(v, (dict, list)) else getattr(v, str(key))
            except (KeyError, IndexError, AttributeError, TypeError):
                v = None
                break
        if v is not None:
            return str(getattr(v, "value", v))
    return None


_EMPTY_PROMPT = [{"role": "user", "content": ""}]


def _wrap_call(
    context: ExecutionContext | dict[str, Any],
    provider: str,
    model: str | None,
    messages: Sequence[Any],
    max_tokens: int | None,
    params: Mapping[str, Any] | None = None,
    api: str | None = None,
) -> _Call:
    if params is None:
        if not model:
            raise ValidationError("model is required (or pass the call's params=)", field="model")
        request = {
            "provider": provider,
            "model": model,
            "max_tokens": max_tokens,
            "messages": list(messages) or _EMPTY_PROMPT,
        }
        return _prepare(request, context)
    if not isinstance(params, Mapping):
        raise ValidationError("params must be the SDK call's keyword arguments", field="params")
    plain = {str(k): _sdk_plain(v) for k, v in params.items()}
    model = model or plain.get("model")
    if not isinstance(model, str) or not model:
        raise ValidationError("params has no model", field="params.model")
    p = normalise_provider(provider) if isinstance(provider, str) else provider
    api = api or ("responses" if p in ("openai", "xai") and "input" in plain else "chat")
    cap, extra = _sdk_output_fields(p, api, plain)
    call = _prepare(
        {
            "provider": p,
            "model": model,
            "api": api,
            "max_tokens": max_tokens or cap,
            "messages": _EMPTY_PROMPT,
            "extra": extra,
        },
        context,
    )
    call.prompt_tokens = count_message_tokens(p, model, _sdk_prompt(plain))
    return call


def sdk_api(call: Any) -> str | None:
    """The API an SDK method belongs to, from its resource class (openai's
    ``client.embeddings.create`` -> embeddings, ``client.responses.create`` -> responses)."""
    resource = type(getattr(call, "__self__", None)).__name__.removeprefix("Async").lower()
    return {"embeddings": "embeddings", "responses": "responses"}.get(resource)


def _sdk_plain(value: Any) -> Any:
    """An SDK call's argument with its SDK objects (pydantic models) as plain dicts."""
    if isinstance(value, list):
        return [_sdk_plain(v) for v in value]
    dump = getattr(value, "model_dump", None)
    return dump(mode="json", exclude_none=True) if callable(dump) else value


def _sdk_output_fields(
    provider: str, api: str, params: Mapping[str, Any]
) -> tuple[int | None, dict[str, Any]]:
    """The output cap an SDK call sets, and the request fields that multiply it, in the REST
    body's terms (what :meth:`Adapter.output_bound` reads)."""

    def cap_of(source: Mapping[str, Any], *fields: str) -> Any:
        values = [source[f] for f in fields if source.get(f) is not None]
        if len(values) > 1 and all(type(v) is int for v in values):
            return max(values)  # OpenAI's max_completion_tokens beside a legacy max_tokens
        return values[0] if values else None  # a bad value is refused naming max_tokens

    if provider == "google":
        config = params.get("config")
        config = config if isinstance(config, Mapping) else {}
        choices = config.get("candidate_count", config.get("candidateCount"))
        extra = {} if choices is None else {"generationConfig": {"candidateCount": choices}}
        return cap_of(config, "max_output_tokens", "maxOutputTokens"), extra
    if api == "embeddings":
        return None, {}
    if provider == "anthropic" or api == "responses":
        return cap_of(params, "max_tokens" if provider == "anthropic" else "max_output_tokens"), {}
    extra = {f: params[f] for f in ("n", "best_of") if params.get(f) is not None}
    return cap_of(params, "max_completion_tokens", "max_tokens"), extra


def _sdk_prompt(params: Mapping[str, Any]) -> list[Any]:
    """The prompt of an SDK call's keyword arguments as messages, for the token estimate."""
    prompt: list[Any] = []
    config = params.get("config")
    config = config if isinstance(config, Mapping) else {}
    for system in (
        params.get("system"),
        params.get("instructions"),
        config.get("system_instruction"),
    ):
        if system:
            prompt.append({"role": "system", "content": _texts(system)})
    for key in ("messages", "input", "contents"):
        value = params.get(key)
        items = value if isinstance(value, list) else [] if value is None else [value]
        for item in items:
            if isinstance(item, Mapping) and "content" in item and "role" in item:
                prompt.append(item)
            else:
                prompt.append({"role": "user", "content": _texts(item)})
    return prompt or _EMPTY_PROMPT


def _texts(value: Any) -> str:
    """Every text inside a prompt value (strings, parts, contents), joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return " ".join(_texts(v) for k, v in value.items() if k in _TEXT_KEYS)
    if isinstance(value, list):
        return " ".join(_texts(v) for v in value)
    return ""


_TEXT_KEYS = ("text", "content", "parts", "input", "output")


def _track_event(
    context: ExecutionContext | dict[str, Any],
    provider: str,
    model: str,
    api_response: Any,
    latency_ms: int | None,
    service_tier: str | None = None,
) -> UsageEvent:
    call = _prepare({"provider": provider, "model": model, "messages": _EMPTY_PROMPT}, context)
    usage = extract_usage(call.request.provider, api_response)
    if service_tier is not None:
        try:
            usage = Usage.model_validate({**usage.model_dump(), "service_tier": service_tier})
        except PydanticValidationError as exc:
            raise ValidationError(f"invalid service_tier: {exc}", field="service_tier") from exc
    event = _event(call, usage=usage, success=True, finish_reason=_finish_reason(api_response))
    if latency_ms is not None:
        event.latency_ms = latency_ms
    return event


def _failure_event(
    context: ExecutionContext | dict[str, Any],
    provider: str,
    model: str,
    error: BaseException | str,
    usage: Usage | None,
    latency_ms: int | None,
) -> UsageEvent:
    call = _prepare({"provider": provider, "model": model, "messages": _EMPTY_PROMPT}, context)
    exc = error if isinstance(error, BaseException) else QuotaflowError(error)
    event = _event(call, usage=usage or Usage(), success=False, error=exc)
    if latency_ms is not None:
        event.latency_ms = latency_ms
    return event


def _stream_event(call: _Call, stream: Any, error: BaseException | None) -> UsageEvent:
    """The settle event of a finished, abandoned (success, usage estimated) or broken
    (failure with the usage received so far) stream."""
    usage: Usage = stream.usage
    return _event(
        call, usage=usage, success=error is None, finish_reason=stream.finish_reason, error=error
    )


# ---------------------------------------------------------------------------------------
# Shared configuration and record building
# ---------------------------------------------------------------------------------------


def _default_backend() -> Backend:
    if database_url_from_env():
        return PostgresBackend()
    try:
        return HttpBackend()
    except ConfigurationError:
        raise ConfigurationError(
            "no backend configured: set QUOTAFLOW_DATABASE_URL/DATABASE_URL (Postgres) or"
            " SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY (HTTP functions), or pass backend="
        ) from None


class TrackerBase(AlertsMixin):
    """What both trackers share: configuration, the outbox, the backend steps (blocking),
    and turning settle results into :class:`UsageRecord` objects."""

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        database_url: str | None = None,
        supabase_url: str | None = None,
        supabase_key: str | None = None,
        providers: Any = None,
        on_usage: UsageCallback | Sequence[UsageCallback] | None = None,
        reservation_ttl: int = DEFAULT_RESERVATION_TTL,
        fail_open: bool = False,
        outbox: Outbox | str | Path | bool | None = None,
    ) -> None:
        if backend is None:
            if database_url:
                backend = PostgresBackend(database_url)
            elif supabase_url:
                backend = HttpBackend(supabase_url, supabase_key)
            else:
                backend = _default_backend()
        self.backend = backend
        self._providers = providers
        self._owns_providers = False
        self._callbacks: list[UsageCallback] = (
            [] if on_usage is None else [on_usage] if callable(on_usage) else list(on_usage)
        )
        self.reservation_ttl = reservation_ttl
        self.fail_open = fail_open
        """When the backend is unreachable at reserve time: False refuses the call
        (BackendUnavailableError), True makes it unreserved and records it via the outbox."""
        self._outbox: Outbox | None = None
        self._outbox_path: Path | None = None
        self._outbox_enabled = outbox is not False
        self._outbox_lock = threading.Lock()
        if isinstance(outbox, Outbox):
            self._outbox = outbox
        elif isinstance(outbox, (str, Path)):
            self._outbox_path = Path(outbox)
        if self._outbox_enabled and self._outbox is None:
            self._outbox_path = path = self._outbox_path or default_outbox_path()
            if path.exists():
                # An earlier process left events behind: start replaying them now.
                self._get_outbox().start()

    def _get_outbox(self) -> Outbox:
        # Locked: threads whose settles fail together must share one outbox (one replayer).
        with self._outbox_lock:
            if self._outbox is None:
                self._outbox = Outbox(self.backend, self._outbox_path)
            return self._outbox

    def _flush(self, timeout: float) -> bool:
        return self._outbox.flush(timeout) if self._outbox is not None else True

    def _close_backend(self, timeout: float) -> None:
        self.stop_alerts()
        if self._outbox is not None:
            self._outbox.close(timeout)
        self.backend.close()

    def on_usage(self, callback: UsageCallback) -> UsageCallback:
        """Registers a callback run after every tracked call (usable as a decorator)."""
        self._callbacks.append(callback)
        return callback

    def _record(self, event: UsageEvent, result: RecordResult | None) -> UsageRecord:
        record = UsageRecord(
            log_id=None if result is None else result.log_id,
            request_id=event.request_id,
            organization_id=event.organization_id,
            provider=event.provider,
            model=event.model,
            usage=event.usage,
            cost=None if result is None else result.cost_usd,
            credits=None if result is None else result.credits,
            price_id=None if result is None else result.price_id,
            unpriced=False if result is None else result.unpriced,
            deferred=result is None,
            success=event.success,
            duplicate=False if result is None else result.duplicate,
            user_id=event.user_id,
            session_id=event.session_id,
            workflow_id=event.workflow_id,
            conversation_id=event.conversation_id,
            latency_ms=event.latency_ms,
            finish_reason=event.finish_reason,
            error=event.error_message,
            tags=event.tags,
            metadata=event.metadata,
            created_at=event.occurred_at,
        )
        for callback in self._callbacks:
            try:
                outcome = callback(record)
                if asyncio.iscoroutine(outcome):
                    _schedule(outcome)
            except Exception:
                log.exception("on_usage callback %r failed; the call is unaffected", callback)
        return record

    def _reserve_kwargs(self, call: _Call) -> dict[str, Any]:
        return {
            "organization_id": call.context.organization_id,
            "request_id": call.request_id,
            "provider": call.request.provider,
            "model": call.request.model,
            "input_tokens": call.prompt_tokens,
            "max_output_tokens": call.max_output_tokens,
            "user_id": call.context.user_id,
            "ttl_seconds": self.reservation_ttl,
        }

    def _settle(self, event: UsageEvent) -> UsageRecord:
        if not self._outbox_enabled:
            return self._record(event, self.backend.record_usage(event))
        # The provider answered: the event goes to disk (fsynced by the outbox's writer)
        # while the backend is tried, so a process killed from here on leaves it in one or
        # the other; a successor replays it and record_usage, idempotent by request_id,
        # charges it once. Deferring or refusing waits until it is on disk.
        outbox = self._get_outbox()
        written = outbox.put_soon(event, in_flight=True)
        try:
            result = self.backend.record_usage(event)
        except TrackingError as exc:
            # Unreachable, or failing on its side past the retries (deadlock, serialization
            # failure, ...): the replayer delivers it later.
            written.wait()
            log.info("usage %s deferred to the outbox: %s", event.request_id, exc)
            outbox.defer(event, str(exc))
            return self._record(event, None)
        except QuotaflowError as exc:
            # Refused for good (no price, a conflicting replay, invalid usage): the caller
            # hears why; the event stays in the outbox, dead, for a person to inspect.
            written.wait()
            outbox.refuse(event, exc)
            raise
        outbox.acknowledge(event)
        return self._record(event, result)

    def _reserve(self, call: _Call) -> Reservation:
        try:
            return self.backend.reserve(**self._reserve_kwargs(call))
        except BackendUnavailableError:
            if not self.fail_open:
                raise
            log.warning(
                "backend unavailable; call %s proceeds unreserved (fail_open)", call.request_id
            )
            return Reservation(
                reservation_id=None,
                status="unreserved",
                reserved_cost=Decimal(0),
                reserved_tokens=0,
            )

    def _perform_backend(self, step: _Step) -> Any:
        """Blocking I/O of the steps that touch only the backend."""
        if isinstance(step, _Reserve):
            return self._reserve(step.call)
        if isinstance(step, _Release):
            try:
                return self.backend.release(step.call.context.organization_id, step.call.request_id)
            except BackendUnavailableError:
                log.warning("could not release %s; it expires by itself", step.call.request_id)
                return False
        if isinstance(step, _GetRecord):
            return self.backend.get_record(step.call.context.organization_id, step.call.request_id)
        if isinstance(step, _Settle):
            return self._settle(step.event)
        raise TypeError(f"not a backend step: {step!r}")

    # ---- read-only helpers, identical for both trackers ----

    def _estimate_args(self, provider: str, model: str, messages: Sequence[Any]) -> tuple[str, int]:
        provider = normalise_provider(provider)
        plain = [m.model_dump() if hasattr(m, "model_dump") else m for m in messages]
        return provider, count_message_tokens(provider, model, plain)


_background: set[asyncio.Task[Any]] = set()


def _schedule(coro: Awaitable[Any]) -> None:
    async def guarded() -> None:
        try:
            await coro
        except Exception:
            log.exception("async on_usage callback failed; the call is unaffected")

    try:
        task = asyncio.get_running_loop().create_task(guarded())
    except RuntimeError:
        asyncio.run(guarded())
        return
    _background.add(task)
    task.add_done_callback(_background.discard)


class StreamBase:
    """What both stream wrappers share: the chunks seen, the error that broke the stream,
    and the settled response."""

    def __init__(self, tracker: TrackerBase, call: _Call, stream: Any) -> None:
        self._tracker = tracker
        self._call = call
        self._stream = stream
        self._chunks: list[str] = []
        self._error: ProviderError | None = None
        self.response: AIModelResponse | None = None

    def _settle_event(self) -> UsageEvent:
        return _stream_event(self._call, self._stream, self._error)

    def _finish(self, event: UsageEvent, record: UsageRecord) -> None:
        self.response = _response(
            self._call, "".join(self._chunks), event.usage, event.finish_reason, record
        )
