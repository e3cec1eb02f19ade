"""The thin I/O shells: send a prepared request with retries (sync and async), read a body or
a stream, and the client classes the Tracker calls. All decisions live in ``_core``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any

import httpx

from quotaflow.errors import ConfigurationError, ProviderError
from quotaflow.models import AIModelRequest, Usage, normalise_provider
from quotaflow.providers._adapters import Adapter, get_adapter
from quotaflow.providers._core import (
    PreparedRequest,
    ProviderResult,
    RetryPolicy,
    RetryState,
    StreamState,
)
from quotaflow.tokens import count_message_tokens

log = logging.getLogger("quotaflow.providers")

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=10.0)
"""Per-request timeouts; ``read`` is the longest silence tolerated inside a streamed answer."""

# Errors raised before the request could have reached the provider: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# --------------------------------------------------------------------------------------------
# Configuration: arguments first, then the environment
# --------------------------------------------------------------------------------------------


def _lookup(mapping: Mapping[str, str] | None, provider: str) -> str | None:
    for k, v in (mapping or {}).items():
        if normalise_provider(k) == provider and v:
            return v
    return None


def resolve_base_url(adapter: Adapter, base_url: str | None = None) -> str:
    """``base_url``, else the first of the adapter's environment variables, else the default."""
    url = base_url or next((os.environ[v] for v in adapter.base_url_env if os.environ.get(v)), None)
    return (url or adapter.default_base_url).rstrip("/")


def resolve_api_key(adapter: Adapter, api_key: str | None = None) -> str:
    """``api_key``, else the adapter's environment variables; ConfigurationError if none."""
    key = api_key or next((os.environ[v] for v in adapter.api_key_env if os.environ.get(v)), None)
    if not key:
        raise ConfigurationError(
            f"no API key for {adapter.provider}: pass api_keys={{'{adapter.provider}': ...}} "
            f"or set {' or '.join(adapter.api_key_env)}"
        )
    return key


def _prompt_estimate(request: AIModelRequest, estimate: int | None) -> int:
    if estimate is not None:
        return estimate
    return count_message_tokens(request.provider, request.model, request.messages)


# --------------------------------------------------------------------------------------------
# Sending with retries: the only code that exists twice (sync and async)
# --------------------------------------------------------------------------------------------


def _http_request(
    client: httpx.Client | httpx.AsyncClient, base_url: str, prepared: PreparedRequest
) -> httpx.Request:
    return client.build_request(
        prepared.method, base_url + prepared.path, headers=prepared.headers, json=prepared.json
    )


def _send(
    client: httpx.Client, base_url: str, prepared: PreparedRequest, retry: RetryState
) -> httpx.Response:
    """The first 2xx response (body not yet read); ProviderError when none comes."""
    while True:
        retry.begin()
        try:
            response = client.send(_http_request(client, base_url, prepared), stream=True)
        except httpx.HTTPError as exc:
            outcome = retry.on_transport_error(exc, retryable=isinstance(exc, _NOT_SENT))
            if isinstance(outcome, ProviderError):
                raise outcome from exc
        else:
            if response.is_success:
                return response
            try:
                body = response.read()
            except httpx.HTTPError:
                body = b""
            finally:
                response.close()
            outcome = retry.on_status(response.status_code, response.headers, body)
            if isinstance(outcome, ProviderError):
                raise outcome
        log.info("%s: retrying in %.2fs (attempt %d)", retry.provider, outcome, retry.attempts)
        time.sleep(outcome)


async def _asend(
    client: httpx.AsyncClient, base_url: str, prepared: PreparedRequest, retry: RetryState
) -> httpx.Response:
    """:func:`_send`, awaited."""
    while True:
        retry.begin()
        try:
            response = await client.send(_http_request(client, base_url, prepared), stream=True)
        except httpx.HTTPError as exc:
            outcome = retry.on_transport_error(exc, retryable=isinstance(exc, _NOT_SENT))
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
        await asyncio.sleep(outcome)


def _parse_body(
    adapter: Adapter, raw: bytes, api_key: str, prompt_tokens_estimate: int
) -> ProviderResult:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ProviderError(
            f"{adapter.provider} answered 2xx with a body that is not JSON",
            provider=adapter.provider,
            retryable=False,
        ) from exc
    return adapter.parse_response(body, prompt_tokens_estimate=prompt_tokens_estimate)


def _read_failed(adapter: Adapter, exc: httpx.HTTPError) -> ProviderError:
    return ProviderError(
        f"{adapter.provider} connection failed while reading the answer: {type(exc).__name__}",
        provider=adapter.provider,
        retryable=True,
    )


def call(
    client: httpx.Client,
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
    response = _send(client, resolve_base_url(adapter, base_url), prepared, state)
    try:
        raw = response.read()
    except httpx.HTTPError as exc:
        raise _read_failed(adapter, exc) from exc
    finally:
        response.close()
    return _parse_body(adapter, raw, key, _prompt_estimate(request, prompt_tokens_estimate))


async def acall(
    client: httpx.AsyncClient,
    request: AIModelRequest,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    prompt_tokens_estimate: int | None = None,
) -> ProviderResult:
    """:func:`call`, awaited."""
    adapter = get_adapter(request.provider, request.api)
    key = resolve_api_key(adapter, api_key)
    prepared = adapter.build_request(request, api_key=key, stream=False)
    state = RetryState(retry or RetryPolicy(), adapter.provider, key)
    response = await _asend(client, resolve_base_url(adapter, base_url), prepared, state)
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        raise _read_failed(adapter, exc) from exc
    finally:
        await response.aclose()
    return _parse_body(adapter, raw, key, _prompt_estimate(request, prompt_tokens_estimate))


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class _StreamView:
    """What both stream classes expose, read from their :class:`StreamState`."""

    _state: StreamState

    @property
    def provider(self) -> str:
        return self._state.provider

    @property
    def usage(self) -> Usage:
        """Provider-reported once its final usage event arrived; until then (and for cut or
        abandoned streams) input known so far or the prompt estimate + output estimated from
        the text received, ``estimated=True``. Zero if the provider never answered 2xx."""
        return self._state.usage

    @property
    def finish_reason(self) -> str | None:
        return self._state.finish_reason

    @property
    def complete(self) -> bool:
        """The provider's terminal event arrived: the text and usage are whole."""
        return self._state.complete

    @property
    def content(self) -> str:
        """The text received so far."""
        return self._state.content

    @property
    def model(self) -> str | None:
        return self._state.model

    @property
    def started(self) -> bool:
        """A 2xx answer was received (from then on the provider may bill)."""
        return self._state.started

    def _broken(self, exc: httpx.HTTPError) -> ProviderError:
        self._state.mark_broken()
        return ProviderError(
            f"{self.provider} stream broke after {len(self._state.parts)} text chunk(s): "
            f"{type(exc).__name__}; usage estimated",
            provider=self.provider,
            retryable=True,
        )


class ProviderStream(_StreamView, Iterator[str]):
    """Text chunks of a streaming call (sync). Iterate it; then read ``usage``,
    ``finish_reason``, ``complete``. Call :meth:`close` (or use ``with``) when stopping early.

    Iteration raises :class:`ProviderError` if the provider sends an error event or the
    connection breaks or ends before the provider's final event; ``usage`` is then estimated.
    """

    def __init__(self, opener: Callable[[], httpx.Response], state: StreamState) -> None:
        self._opener: Callable[[], httpx.Response] | None = opener
        self._state = state
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] | None = None

    def open(self) -> ProviderStream:
        """Send the request (with retries) unless already sent; raises ProviderError."""
        if self._opener is not None:
            opener, self._opener = self._opener, None
            self._response = opener()
            self._state.started = True
            self._lines = self._response.iter_lines()
        return self

    def __iter__(self) -> ProviderStream:
        return self

    def __next__(self) -> str:
        self.open()
        if self._state.ended or self._lines is None:
            raise StopIteration
        while True:
            try:
                line = next(self._lines)
            except StopIteration:
                error = self._state.mark_eof()
                self._release()
                if error is not None:
                    raise error from None
                raise
            except httpx.HTTPError as exc:
                error = self._broken(exc)
                self._release()
                raise error from exc
            try:
                text = self._state.feed_line(line)
            except ProviderError:
                self._release()
                raise
            if text:
                return text

    def _release(self) -> None:
        if self._response is not None:
            self._response.close()

    def close(self) -> None:
        """Stop reading; a stream closed before its final event keeps an estimated usage."""
        self._opener = None
        self._state.mark_abandoned()
        self._release()

    def __enter__(self) -> ProviderStream:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProviderStream(_StreamView, AsyncIterator[str]):
    """:class:`ProviderStream`, async. ``await aclient.stream(...)`` sends the request at once
    (errors raise there); ``async for chunk in aclient.stream(...)`` sends it on the first
    iteration. Close with :meth:`aclose` (or ``async with``) when stopping early."""

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

    def __await__(self) -> Generator[Any, None, AsyncProviderStream]:
        return self.open().__await__()

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


def _prepare_stream(
    request: AIModelRequest,
    base_url: str | None,
    api_key: str | None,
    retry: RetryPolicy | None,
    prompt_tokens_estimate: int | None,
) -> tuple[str, PreparedRequest, RetryState, StreamState]:
    adapter = get_adapter(request.provider, request.api)
    key = resolve_api_key(adapter, api_key)
    prepared = adapter.build_request(request, api_key=key, stream=True)
    state = StreamState(
        adapter, prompt_tokens_estimate=_prompt_estimate(request, prompt_tokens_estimate)
    )
    retry_state = RetryState(retry or RetryPolicy(), adapter.provider, key)
    return resolve_base_url(adapter, base_url), prepared, retry_state, state


def stream(
    client: httpx.Client,
    request: AIModelRequest,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    prompt_tokens_estimate: int | None = None,
) -> ProviderStream:
    """Open a streaming call through ``client`` (retrying only before the answer starts)."""
    url, prepared, retry_state, state = _prepare_stream(
        request, base_url, api_key, retry, prompt_tokens_estimate
    )
    return ProviderStream(lambda: _send(client, url, prepared, retry_state), state).open()


def astream(
    client: httpx.AsyncClient,
    request: AIModelRequest,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    retry: RetryPolicy | None = None,
    prompt_tokens_estimate: int | None = None,
) -> AsyncProviderStream:
    """:func:`stream`, async; the request is sent when the stream is awaited or iterated."""
    url, prepared, retry_state, state = _prepare_stream(
        request, base_url, api_key, retry, prompt_tokens_estimate
    )
    return AsyncProviderStream(lambda: _asend(client, url, prepared, retry_state), state)


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class _ClientBase:
    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        base_urls: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> None:
        self._api_keys = dict(api_keys or {})
        self._base_urls = dict(base_urls or {})
        self.retry = retry or RetryPolicy()
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout

    def _options(self, request: AIModelRequest) -> dict[str, Any]:
        return {
            "base_url": _lookup(self._base_urls, request.provider),
            "api_key": _lookup(self._api_keys, request.provider),
            "retry": self.retry,
        }

    def __repr__(self) -> str:  # never show keys
        return f"{type(self).__name__}(providers={sorted(self._api_keys)!r}, retry={self.retry!r})"


def _as_request(request: AIModelRequest | Mapping[str, Any]) -> AIModelRequest:
    return (
        request if isinstance(request, AIModelRequest) else AIModelRequest.model_validate(request)
    )


class ProviderClient(_ClientBase):
    """Calls providers with blocking I/O. See the package docstring for the interface."""

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        base_urls: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api_keys=api_keys, base_urls=base_urls, retry=retry, timeout=timeout)
        self._http = http_client
        self._owns_http = http_client is None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout)
        return self._http

    def complete(
        self,
        request: AIModelRequest | Mapping[str, Any],
        *,
        prompt_tokens_estimate: int | None = None,
    ) -> ProviderResult:
        """One non-streaming call (``request.stream`` is ignored); raises ProviderError."""
        req = _as_request(request)
        return call(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )

    def stream(
        self,
        request: AIModelRequest | Mapping[str, Any],
        *,
        prompt_tokens_estimate: int | None = None,
    ) -> ProviderStream:
        """Send a streaming call now (errors before the answer starts raise here) and return
        the iterator of its text chunks."""
        req = _as_request(request)
        return stream(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )

    def close(self) -> None:
        if self._http is not None and self._owns_http:
            self._http.close()
            self._http = None

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncProviderClient(_ClientBase):
    """Calls providers with async I/O; the same interface as :class:`ProviderClient`."""

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
        req = _as_request(request)
        return await acall(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )

    def stream(
        self,
        request: AIModelRequest | Mapping[str, Any],
        *,
        prompt_tokens_estimate: int | None = None,
    ) -> AsyncProviderStream:
        """The stream of a call: ``await`` it to send now, or iterate it to send on first use."""
        req = _as_request(request)
        return astream(
            self.http, req, prompt_tokens_estimate=prompt_tokens_estimate, **self._options(req)
        )

    async def aclose(self) -> None:
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
