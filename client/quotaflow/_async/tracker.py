"""The tracker's I/O shell: runs the flows of ``quotaflow.flow`` step by step. The provider is
called with the provider client; backend steps run the blocking backend (in a worker thread
when async: the pool is thread-safe)."""

from __future__ import annotations

import functools
import inspect  # async-only
import io
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import IO, Any, overload

from quotaflow._async._compat import to_thread
from quotaflow._sync.tracker import TrackedSdkManager, TrackedSdkStream  # async-only
from quotaflow.errors import ProviderError, QuotaflowError, ValidationError
from quotaflow.flow import (
    ASYNC_STREAM_GIVEN,
    Flow,
    SdkStreamTap,
    StreamBase,
    T,
    TrackerBase,
    _Call,
    _execute_flow,
    _failure_event,
    _open_stream_flow,
    _prepare,
    _Provider,
    _Release,
    _Step,
    _track_event,
    _UserCall,
    _wrap_call,
    _wrap_flow,
    sdk_api,
)
from quotaflow.models import (
    AIModelRequest,
    AIModelResponse,
    ExecutionContext,
    QuotaCheck,
    QuotaStatus,
    Usage,
    UsageRecord,
)
from quotaflow.providers import AsyncProviderClient
from quotaflow.reports.analytics import (
    AggregatedUsage,
    ExportFormat,
    GroupBy,
    QuotaAlert,
    UsageFilters,
    count_records,
    export,
    get_aggregated,
    get_alerts,
    get_records,
)

log = logging.getLogger("quotaflow")


class AsyncTracker(TrackerBase):
    """Tracks, prices and caps AI calls.

    Configuration: ``backend=``, else ``database_url=`` (Postgres), else ``supabase_url=`` +
    ``supabase_key=`` (HTTP functions), else the environment (``QUOTAFLOW_DATABASE_URL`` /
    ``DATABASE_URL``, or ``SUPABASE_URL`` + ``SUPABASE_SERVICE_ROLE_KEY``). Closing it (or
    leaving its ``with`` block) drains the outbox, closes the backend and the provider client
    it created.
    """

    def _provider_client(self) -> AsyncProviderClient:
        if self._providers is None:
            self._providers = AsyncProviderClient()
            self._owns_providers = True
        return self._providers  # type: ignore[no-any-return]

    async def _run(self, flow: Flow[T]) -> T:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                value = await self._perform(step)
            except BaseException as exc:
                error = exc

    async def _perform(self, step: _Step) -> Any:
        if isinstance(step, _Provider):
            client = self._provider_client()
            if step.stream:
                return await client.stream(
                    step.call.request, prompt_tokens_estimate=step.call.prompt_tokens
                ).open()
            return await client.complete(step.call.request)
        if isinstance(step, _UserCall):
            outcome = step.fn()
            if inspect.isawaitable(outcome):  # async-only
                outcome = await outcome  # async-only
            return outcome
        return await to_thread(self._perform_backend, step)

    async def execute_with_tracking(
        self, request: AIModelRequest | dict[str, Any], context: ExecutionContext | dict[str, Any]
    ) -> Any:
        """Estimate, reserve, call the provider, settle; returns an :class:`AIModelResponse`.

        With ``stream=True`` returns the stream of text chunks (:class:`AsyncTrackedStream`);
        it settles when exhausted, closed or broken (``.response`` then holds the result).
        Raises ``QuotaExceededError`` before anything is sent when a hard quota refuses.
        """
        call = _prepare(request, context)
        if not call.request.stream:
            return await self._run(_execute_flow(call))
        opened = await self._run(_open_stream_flow(call))
        if isinstance(opened, AIModelResponse):
            return opened
        return AsyncTrackedStream(self, call, opened)

    async def wrap_with_tracking(
        self,
        context: ExecutionContext | dict[str, Any],
        call: Callable[..., Any],
        *,
        provider: str,
        model: str | None = None,
        messages: Sequence[Any] = (),
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Runs the app's own SDK call under a reservation and records what it used.

        ``call()`` is run as given, with ``model``/``messages``/``max_tokens`` describing it for
        the reservation; or ``call(**params)`` with the SDK call's keyword arguments, from which
        the model, the prompt and the output cap (``max_tokens``, ``max_completion_tokens``,
        ``max_output_tokens``, ``config.max_output_tokens``, times ``n``/``candidate_count``)
        are read. A whole response is settled at once from its usage (an estimate, flagged,
        when it reports none). A stream (``stream=True``, google-genai's
        ``generate_content_stream``) comes back as an :class:`AsyncTrackedSdkStream` iterated
        like the SDK's own; a stream manager (anthropic's ``messages.stream()``, openai's
        ``.stream()`` helpers) as an :class:`AsyncTrackedSdkManager`. Those settle when the
        stream ends, breaks, is closed or dropped.
        """
        api = None if params is None else sdk_api(call)
        tracked = _wrap_call(context, provider, model, messages, max_tokens, params, api)
        run = call if params is None else functools.partial(call, **params)
        raw, record = await self._run(_wrap_flow(tracked, run))
        if record is not None:
            return raw
        if hasattr(raw, "__anext__"):
            return AsyncTrackedSdkStream(self, tracked, raw)
        if hasattr(raw, "__aenter__"):
            return AsyncTrackedSdkManager(self, tracked, raw)
        # async-only: begin
        if hasattr(raw, "__next__"):
            return TrackedSdkStream(self, tracked, raw)
        if hasattr(raw, "__enter__"):
            return TrackedSdkManager(self, tracked, raw)
        # async-only: end
        await to_thread(self._settle, SdkStreamTap(tracked).event(None))
        raise ValidationError(f"{type(raw).__name__}: {ASYNC_STREAM_GIVEN}", field="call")

    async def track_usage(
        self,
        context: ExecutionContext | dict[str, Any],
        provider: str,
        model: str,
        api_response: Any,
        *,
        latency_ms: int | None = None,
        service_tier: str | None = None,
    ) -> UsageRecord:
        """Records a call made without a reservation, from the provider's raw response;
        ``service_tier`` (e.g. ``"batch"`` for Batch API results) when the response does not
        say it."""
        event = _track_event(context, provider, model, api_response, latency_ms, service_tier)
        return await to_thread(self._settle, event)

    async def track_failure(
        self,
        context: ExecutionContext | dict[str, Any],
        provider: str,
        model: str,
        error: BaseException | str,
        *,
        usage: Usage | None = None,
        latency_ms: int | None = None,
    ) -> UsageRecord:
        """Records a failed call (a failure row; usage, if the provider reported any)."""
        event = _failure_event(context, provider, model, error, usage, latency_ms)
        return await to_thread(self._settle, event)

    async def check_quota(
        self,
        organization_id: str,
        provider: str,
        model: str,
        estimated_cost: Decimal | float | str,
        user_id: str | None = None,
    ) -> list[QuotaCheck]:
        """One row per applicable quota: would a call of this cost be admitted? Read-only."""
        cost = Decimal(str(estimated_cost))
        return await to_thread(
            self.backend.check_quota, organization_id, provider, model, cost, user_id
        )

    async def estimate_cost(
        self, provider: str, model: str, messages: Sequence[Any], max_output_tokens: int = 1000
    ) -> Decimal:
        """Upper-bound USD cost: the prompt's tokens plus ``max_output_tokens`` of output."""
        provider, tokens = self._estimate_args(provider, model, messages)
        return await to_thread(
            self.backend.estimate_cost, provider, model, tokens, max_output_tokens
        )

    async def get_quota_status(self, organization_id: str) -> list[QuotaStatus]:
        return await to_thread(self.backend.get_quota_status, organization_id)

    # ---- analytics (the backend must be a PostgresBackend) ----

    async def get_records(
        self, filters: UsageFilters | dict[str, Any], limit: int = 100, offset: int = 0
    ) -> list[UsageRecord]:
        """:func:`quotaflow.reports.get_records` on this tracker's backend."""
        return await to_thread(get_records, self.backend, filters, limit, offset)

    async def count_records(self, filters: UsageFilters | dict[str, Any]) -> int:
        """:func:`quotaflow.reports.count_records` on this tracker's backend."""
        return await to_thread(count_records, self.backend, filters)

    async def get_aggregated(
        self, filters: UsageFilters | dict[str, Any], group_by: GroupBy | None = None
    ) -> AggregatedUsage:
        """:func:`quotaflow.reports.get_aggregated` on this tracker's backend."""
        return await to_thread(get_aggregated, self.backend, filters, group_by)

    @overload
    async def export(
        self,
        format: ExportFormat,
        filters: UsageFilters | dict[str, Any],
        out: None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> str: ...

    @overload
    async def export(
        self,
        format: ExportFormat,
        filters: UsageFilters | dict[str, Any],
        out: IO[str],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int: ...

    async def export(
        self,
        format: ExportFormat,
        filters: UsageFilters | dict[str, Any],
        out: IO[str] | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> str | int:
        """:func:`quotaflow.reports.export` to ``out`` (returns the row count), or, without
        ``out``, the whole export as a string (seed 002's ``tracker.export('csv')``; small
        sets only)."""
        if out is not None:
            return await to_thread(export, self.backend, filters, format, out, progress=progress)
        buffer = io.StringIO()
        await to_thread(export, self.backend, filters, format, buffer, progress=progress)
        return buffer.getvalue()

    async def get_alerts(
        self, organization_id: str, *, since: datetime | None = None, limit: int = 100
    ) -> list[QuotaAlert]:
        """:func:`quotaflow.reports.get_alerts` on this tracker's backend."""
        return await to_thread(get_alerts, self.backend, organization_id, since=since, limit=limit)

    # ---- lifecycle ----

    async def flush(self, timeout: float = 30.0) -> bool:
        """Waits until every deferred usage event is recorded (or ``timeout`` passes)."""
        return await to_thread(self._flush, timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Drains the outbox (up to ``timeout`` seconds; what is left stays on disk for the
        next process), closes the backend and the provider client this tracker created."""
        await to_thread(self._close_backend, timeout)
        providers, self._providers = self._providers, None
        if providers is not None and self._owns_providers:
            await providers.aclose()

    async def __aenter__(self) -> AsyncTracker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTrackedStream(StreamBase):
    """Text chunks of a streaming call; settles once when exhausted, closed or broken."""

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._stream:
                self._chunks.append(chunk)
                yield chunk
        except ProviderError as exc:
            self._error = exc
            raise
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self.response is not None:
            return
        try:
            await self._stream.aclose()
        finally:
            event = self._settle_event()
            self._finish(event, await to_thread(self._tracker._settle, event))

    async def __aenter__(self) -> AsyncTrackedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTrackedSdkStream:
    """An official SDK stream, iterated exactly as the SDK's own (its other attributes are the
    SDK stream's). It settles once: when the stream ends (the provider's usage), breaks (a
    failure row), is closed, its ``with`` block left or it is dropped (abandoned: an estimate
    flagged ``estimated=True``). ``usage_record`` then holds the settled record."""

    def __init__(self, tracker: TrackerBase, call: _Call, inner: Any) -> None:
        self._tracker = tracker
        self._inner = inner
        self._tap = SdkStreamTap(call)
        self.usage_record: UsageRecord | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __aiter__(self) -> AsyncTrackedSdkStream:
        return self

    async def __anext__(self) -> Any:
        try:
            event = await self._inner.__anext__()
        except StopAsyncIteration:
            await self._settle(None)
            raise
        except Exception as exc:
            await self._settle(exc)
            raise
        except BaseException:  # cancelled or interrupted: abandoned
            await self._settle(None)
            raise
        self._tap.feed(event)
        return event

    async def aclose(self) -> None:
        """Closes the SDK stream (its HTTP response) and settles."""
        try:
            inner = self._inner
            closer = getattr(inner, "close", None)
            closer = getattr(inner, "aclose", None) or closer  # async-only
            if closer is not None:
                outcome = closer()  # sync: closer()
                if inspect.isawaitable(outcome):  # async-only
                    await outcome  # async-only
        finally:
            await self._settle(None)

    # async-only: begin
    async def close(self) -> None:
        """The name openai's and anthropic's async streams give :meth:`aclose`."""
        await self.aclose()

    # async-only: end
    async def __aenter__(self) -> AsyncTrackedSdkStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _settle(self, error: BaseException | None) -> None:
        if self._tap.settled:
            return
        self._tap.settled = True
        try:
            self.usage_record = await to_thread(self._tracker._settle, self._tap.event(error))
        except QuotaflowError:
            # The app's stream ends as the SDK's does; the event is in the outbox (refused
            # events stay there, dead, for a person to look at).
            log.exception("could not settle stream %s", self._tap.call.request_id)

    def __del__(self) -> None:
        # Dropped unfinished and unclosed: settled from a thread of its own (never on the
        # thread the collector ran on: an event loop, the outbox writer) so no hold stays.
        tap = self.__dict__.get("_tap")
        if tap is not None and not tap.settled:
            tap.settled = True
            threading.Thread(
                target=_settle_dropped, args=(self._tracker, tap), daemon=True
            ).start()


def _settle_dropped(tracker: TrackerBase, tap: SdkStreamTap) -> None:
    try:
        tracker._settle(tap.event(None))
    except Exception:
        log.exception("could not settle abandoned stream %s", tap.call.request_id)


def _release_unentered(tracker: TrackerBase, call: _Call) -> None:
    try:
        tracker._perform_backend(_Release(call))
    except Exception:
        log.exception("could not release %s", call.request_id)


class AsyncTrackedSdkManager:
    """An SDK stream manager (anthropic's ``messages.stream()``, openai's ``.stream()``
    helpers): ``async with`` gives the SDK's own stream object, whose raw events are tapped;
    it settles when the stream ends or the block is left."""

    def __init__(self, tracker: TrackerBase, call: _Call, manager: Any) -> None:
        self._tracker = tracker
        self._call = call
        self._manager = manager
        self._tap: AsyncTrackedSdkStream | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._manager, name)

    @property
    def usage_record(self) -> UsageRecord | None:
        return None if self._tap is None else self._tap.usage_record

    async def __aenter__(self) -> Any:
        self._tap = tap = AsyncTrackedSdkStream(self._tracker, self._call, None)
        try:
            stream = await self._manager.__aenter__()
        except Exception as exc:
            await tap._settle(exc)
            raise
        # The SDK helpers (Stainless-generated) read their events from ``_raw_stream``.
        raw = getattr(stream, "_raw_stream", None)
        if raw is None:
            log.warning(
                "%s has no raw stream to read usage from; its usage will be estimated",
                type(stream).__name__,
            )
            return stream
        tap._inner = raw
        stream._raw_stream = tap
        return stream

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._manager.__aexit__(*exc)
        finally:
            if self._tap is not None:
                await self._tap.aclose()

    def __del__(self) -> None:
        # Never entered: the SDK sent no request, so the hold is released, not settled.
        if self.__dict__.get("_tap") is None and "_call" in self.__dict__:
            threading.Thread(
                target=_release_unentered, args=(self._tracker, self._call), daemon=True
            ).start()
