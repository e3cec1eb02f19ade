"""The tracker's I/O shell: runs the flows of ``quotaflow.flow`` step by step. The provider is
called with the provider client; backend steps run the blocking backend (in a worker thread
when async: the pool is thread-safe)."""

from __future__ import annotations

import inspect  # async-only
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import IO, Any, overload

from quotaflow._async._compat import to_thread
from quotaflow.errors import ProviderError
from quotaflow.flow import (
    Flow,
    StreamBase,
    T,
    TrackerBase,
    _execute_flow,
    _failure_event,
    _open_stream_flow,
    _prepare,
    _Provider,
    _Step,
    _track_event,
    _UserCall,
    _wrap_call,
    _wrap_flow,
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
        call: Callable[[], Awaitable[T]],
        *,
        provider: str,
        model: str,
        messages: Sequence[Any] = (),
        max_tokens: int | None = None,
    ) -> T:
        """Runs the app's own SDK call under a reservation and records what it used."""
        tracked = _wrap_call(context, provider, model, messages, max_tokens)
        raw, _ = await self._run(_wrap_flow(tracked, call))
        return raw  # type: ignore[no-any-return]

    async def track_usage(
        self,
        context: ExecutionContext | dict[str, Any],
        provider: str,
        model: str,
        api_response: Any,
        *,
        latency_ms: int | None = None,
    ) -> UsageRecord:
        """Records a call made without a reservation, from the provider's raw response."""
        event = _track_event(context, provider, model, api_response, latency_ms)
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
