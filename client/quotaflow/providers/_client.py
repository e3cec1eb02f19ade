"""What the provider I/O shells (``quotaflow._async.providers`` and the ``quotaflow._sync``
module generated from it) share: configuration, request building, body parsing, the stream
view and the client base. All decisions live in ``_core``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import httpx

from quotaflow._retry import RetryPolicy
from quotaflow.errors import ConfigurationError, ProviderError
from quotaflow.models import AIModelRequest, Usage, normalise_provider
from quotaflow.providers._adapters import Adapter, get_adapter
from quotaflow.providers._core import (
    PreparedRequest,
    ProviderResult,
    RetryState,
    StreamState,
)
from quotaflow.tokens import count_message_tokens

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=10.0)
"""Per-request timeouts; ``read`` is the longest silence tolerated inside a streamed answer."""

# Errors raised before the request could have reached the provider: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


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


def prompt_estimate(request: AIModelRequest, estimate: int | None) -> int:
    if estimate is not None:
        return estimate
    return count_message_tokens(request.provider, request.model, request.messages)


# --------------------------------------------------------------------------------------------
# Requests and bodies
# --------------------------------------------------------------------------------------------


def http_request(
    client: httpx.Client | httpx.AsyncClient, base_url: str, prepared: PreparedRequest
) -> httpx.Request:
    return client.build_request(
        prepared.method, base_url + prepared.path, headers=prepared.headers, json=prepared.json
    )


def parse_body(adapter: Adapter, raw: bytes, prompt_tokens_estimate: int) -> ProviderResult:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ProviderError(
            f"{adapter.provider} answered 2xx with a body that is not JSON",
            provider=adapter.provider,
            retryable=False,
        ) from exc
    return adapter.parse_response(body, prompt_tokens_estimate=prompt_tokens_estimate)


def read_failed(adapter: Adapter, exc: httpx.HTTPError) -> ProviderError:
    return ProviderError(
        f"{adapter.provider} connection failed while reading the answer: {type(exc).__name__}",
        provider=adapter.provider,
        retryable=True,
    )


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class StreamView:
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


def prepare_stream(
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
        adapter, prompt_tokens_estimate=prompt_estimate(request, prompt_tokens_estimate)
    )
    retry_state = RetryState(retry or RetryPolicy(), adapter.provider, key)
    return resolve_base_url(adapter, base_url), prepared, retry_state, state


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class ClientBase:
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


def as_request(request: AIModelRequest | Mapping[str, Any]) -> AIModelRequest:
    return (
        request if isinstance(request, AIModelRequest) else AIModelRequest.model_validate(request)
    )
