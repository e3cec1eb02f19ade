"""Provider I/O: send a prepared request with retries, read a body or a stream, and the client
class the Tracker calls. All decisions live in ``quotaflow.providers._core``; what both the
async and the blocking shells share lives in ``quotaflow.providers._client``."""

from __future__ import annotations

import asyncio  # sync: import time
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from typing import Any

import httpx

from quotaflow._retry import RetryPolicy
from quotaflow.errors import ProviderError
from quotaflow.models import AIModelRequest
from quotaflow.providers._adapters import get_adapter
from quotaflow.providers._client import (
    NOT_SENT,
    ClientBase,
    StreamView,
    as_request,
    http_request,
    parse_body,
    prepare_stream,
    prompt_estimate,
    read_failed,
    resolve_api_key,
    resolve_base_url,
)
from quotaflow.providers._core import ProviderResult, RetryState, StreamState

log = logging.getLogger("quotaflow.providers")


async def _asend(
    client: httpx.AsyncClient, base_url: str, prepared: Any, retry: RetryState
) -> httpx.Response:
    """The first 2xx response (body not yet read); ProviderError when none comes."""
    while True:
        retry.begin()
        try:
            response = await client.send(http_request(client, base_url, prepared), stream=True)
        except httpx.HTTPError as exc:
            outcome = retry.on_transport_error(exc, retryable=isinstance(exc, NOT_SENT))
            if isinstance(outcome, ProviderError):
                raise outcome from exc
        else:
            if response.is_success:
                return response
            try:
                body = await response.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await response.aclose()
            outcome = retry.on_status(response.status_code, response.headers, body)
            if isinstance(outcome, ProviderError):
                raise outcome
        log.info("%s: retrying in %.2fs (attempt %d)", retry.provider, outcome, retry.attempts)
        await asyncio.sleep(outcome)  # sync: time.sleep(outcome)


async def acall(
    client: httpx.AsyncClient,
    request: AIModelRequest,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    prompt_tokens_estimate: int | None = None,
) -> ProviderResult:
    """One non-streaming call through ``client``, with retries."""
    adapter = get_adapter(request.provider, request.api)
    key = resolve_api_key(adapter, api_key)
    prepared = adapter.build_request(request, api_key=key, stream=False)
    state = RetryState(retry or RetryPolicy(), adapter.provider, key)
    response = await _asend(client, resolve_base_url(adapter, base_url), prepared, state)
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise read_failed(adapter, exc) from exc
    finally:
        await response.aclose()
    return parse_body(adapter, raw, prompt_estimate(request, prompt_tokens_estimate))


class AsyncProviderStream(StreamView, AsyncIterator[str]):
    """Text chunks of a streaming call. Iterate it; then read ``usage``, ``finish_reason``,
    ``complete``. Call :meth:`aclose` (or use ``with``) when stopping early.

    :meth:`open` sends the request (errors before the answer starts raise there); the stream
    opens itself on the first iteration otherwise. Iteration raises :class:`ProviderError` if
    the provider sends an error event or the connection breaks or ends before the provider's
    final event; ``usage`` is then estimated.
    """

    def __init__(self, opener: Callable[[], Awaitable[httpx.Response]], state: StreamState) -> None:
        self._opener: Callable[[], Awaitable[httpx.Response]] | None = opener
        self._state = state
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def open(self) -> AsyncProviderStream:
        """Send the request (with retries) unless already sent; raises ProviderError."""
        if self._opener is not None:
            opener, self._opener = self._opener, None
            self._response = await opener()
            self._state.started = True
            self._lines = self._response.aiter_lines()
        return self

    # async-only: begin
    def __await__(self) -> Generator[Any, None, AsyncProviderStream]:
        return self.open().__await__()

    # async-only: end
    def __aiter__(self) -> AsyncProviderStream:
        return self

    async def __anext__(self) -> str:
        await self.open()
        if self._state.ended or self._lines is None:
            raise StopAsyncIteration
        while True:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                error = self._state.mark_eof()
                await self._release()
                if error is not None:
                    raise error from None
                raise
            except httpx.HTTPError as exc:
                error = self._broken(exc)
                await self._release()
                raise error from exc
            try:
                text = self._state.feed_line(line)
            except ProviderError:
                await self._release()
                raise
            if text:
                return text

    async def _release(self) -> None:
        if self._response is not None:
            await self._response.aclose()

    async def aclose(self) -> None:
        """Stop reading; a stream closed before its final event keeps an estimated usage."""
        self._opener = None
        self._state.mark_abandoned()
        await self._release()

    async def __aenter__(self) -> AsyncProviderStream:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def astream(
    client: httpx.AsyncClient,
    request: AIModelRequest,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    prompt_tokens_estimate: int | None = None,
) -> AsyncProviderStream:
    """A streaming call through ``client`` (retrying only before the answer starts); sent
    when the stream is opened or first iterated."""
    url, prepared, retry_state, state = prepare_stream(
        request, base_url, api_key, retry, prompt_tokens_estimate
    )
    return AsyncProviderStream(lambda: _asend(client, url, prepared, retry_state), state)


class AsyncProviderClient(ClientBase):
    """Calls providers; see the ``quotaflow.providers`` docstring for the interface."""

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        base_urls: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api_keys=api_keys, base_urls=base_urls, retry=retry, timeout=timeout)
        self._http = http_client
        self._owns_http = http_client is None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.timeout)
        return self._http

    async def complete(
        self,
        request: AIModelRequest | Mapping[str, Any],
        *,
        prompt_tokens_estimate: int | None = None,
    ) -> ProviderResult:
        """One non-streaming call (``request.stream`` is ignored); raises ProviderError."""
        req = as_request(request)
        return await acall(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )

    def stream(
        self,
        request: AIModelRequest | Mapping[str, Any],
        *,
        prompt_tokens_estimate: int | None = None,
    ) -> AsyncProviderStream:
        """The iterator of a streaming call's text chunks. The blocking client sends the call
        now (errors before the answer starts raise here); the async one when the stream is
        awaited, opened or first iterated."""
        req = as_request(request)
        opened = astream(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )
        return opened  # sync: return opened.open()

    async def aclose(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
