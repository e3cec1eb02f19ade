"""Provider adapters over httpx: OpenAI (Chat Completions and Responses), Anthropic Messages,
Google Gemini and xAI, with retries, streaming and usage normalisation.

Interface for the Tracker
-------------------------
::

    client = ProviderClient()                         # keys and URLs from the environment
    client = ProviderClient(api_keys={"openai": "sk-..."}, base_urls={"openai": url + "/v1"},
                            retry=RetryPolicy(max_attempts=3), timeout=30.0,
                            http_client=None)         # or your own httpx.Client

    result = client.complete(request)                 # -> ProviderResult
    result.content, result.usage, result.finish_reason, result.model, result.raw

    stream = client.stream(request, prompt_tokens_estimate=N)   # -> ProviderStream
    for chunk in stream:                              # str text deltas
        ...
    stream.usage, stream.finish_reason, stream.complete, stream.content, stream.started
    stream.close()                                    # always safe; `with` works too

    aclient = AsyncProviderClient(...)                # same arguments, httpx.AsyncClient
    result = await aclient.complete(request)
    stream = await aclient.stream(request, prompt_tokens_estimate=N)   # sends now
    async for chunk in stream: ...                    # (or iterate un-awaited: sends lazily)
    await stream.aclose(); await aclient.aclose()

``request`` is a :class:`quotaflow.models.AIModelRequest` (or a dict for one). Its ``provider``
picks the adapter, ``api`` picks Chat Completions or the Responses API (OpenAI, xAI);
``max_tokens``, ``temperature`` and ``extra`` (provider body fields, merged last) are sent.
``complete`` ignores ``request.stream``; ``stream`` always streams.

Errors. Everything the provider or the network does wrong is a
:class:`quotaflow.errors.ProviderError` with ``provider``, ``status`` (HTTP status or None),
``retryable`` and ``retry_after``; messages carry the provider's own error text, never the
API key. A missing key is a :class:`~quotaflow.errors.ConfigurationError`, raised before
anything is sent.

* 408, 409, 429, 5xx and connect errors are retried per :class:`RetryPolicy` (named constants
  ``INITIAL_DELAY``, ``MULTIPLIER``, ``MAX_DELAY``, ``JITTER``, ``MAX_ATTEMPTS``, ``DEADLINE``),
  honouring ``Retry-After`` (seconds or HTTP date) and ``retry-after-ms``; a wait that would end
  past the deadline is not started. Exhausted: ``ProviderError(retryable=True, status=last)``.
* Other 4xx: ``ProviderError(status=..., retryable=False)`` at once.
* Streams retry only before the answer starts (``client.stream`` / ``await aclient.stream``
  raise those errors). Once text flows, a broken connection, a body ending before the
  provider's final event, or an in-stream error event raise ``ProviderError`` from the
  iteration; ``stream.usage`` stays readable.

Streams and usage. OpenAI/xAI chat streams send ``stream_options: {"include_usage": true}``;
usage comes from the provider's own events (OpenAI's final chunk, Responses
``response.completed``, Anthropic ``message_start`` + cumulative ``message_delta``, Gemini's
last ``usageMetadata``). ``stream.usage`` is exact once that final usage arrived. A stream
closed early, cut or broken before it reports input tokens known so far (Anthropic, Gemini) or
``prompt_tokens_estimate`` (counted from the messages when not given) + output estimated from
the text received, with ``estimated=True``; ``complete`` is then False. A stream that never got
a 2xx answer reports zero usage (``started`` is False): nothing was billed.

Configuration. Arguments first, then the environment. Base URLs: ``QUOTAFLOW_OPENAI_BASE_URL``
/ ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), ``QUOTAFLOW_ANTHROPIC_BASE_URL`` /
``ANTHROPIC_BASE_URL`` (``https://api.anthropic.com``), ``QUOTAFLOW_GOOGLE_BASE_URL`` /
``QUOTAFLOW_GEMINI_BASE_URL`` / ``GOOGLE_GEMINI_BASE_URL``
(``https://generativelanguage.googleapis.com``), ``QUOTAFLOW_XAI_BASE_URL`` / ``XAI_BASE_URL``
(``https://api.x.ai/v1``) — the same shapes the official SDKs take, so a
:class:`~quotaflow.testing.FakeProviderServer` at ``url`` is ``url + "/v1"`` for OpenAI
and xAI and ``url`` for the others. Keys: ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``,
``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``, ``XAI_API_KEY``.

Pure parts (no I/O), for tests and for other shells: :func:`get_adapter` returns an
:class:`Adapter` with ``build_request(request, api_key=..., stream=...)`` →
:class:`PreparedRequest` (unpacks as ``method, path, headers, json``),
``parse_response(body)`` → :class:`ProviderResult` and ``parse_stream_event(event)`` →
:class:`StreamUpdate`; :class:`SSEDecoder` / :func:`iter_sse` decode ``text/event-stream``
lines; :class:`StreamState` folds a stream; :class:`RetryPolicy` / :func:`parse_retry_after`
decide waits. The I/O shells are :func:`call` / :func:`acall` / :func:`stream` / :func:`astream`,
taking an ``httpx.Client`` / ``httpx.AsyncClient`` (streams are sent when opened or first
iterated); the blocking ones are generated from the async ones (``tools/async_to_sync.py``).
"""

from __future__ import annotations

from quotaflow._async.providers import AsyncProviderClient, AsyncProviderStream, acall, astream
from quotaflow._retry import (
    DEADLINE,
    INITIAL_DELAY,
    JITTER,
    MAX_ATTEMPTS,
    MAX_DELAY,
    MULTIPLIER,
    RetryPolicy,
)
from quotaflow._sync.providers import ProviderClient, ProviderStream, call, stream
from quotaflow.providers._adapters import (
    ADAPTERS,
    ANTHROPIC_DEFAULT_MAX_TOKENS,
    ANTHROPIC_VERSION,
    Adapter,
    AnthropicAdapter,
    GeminiAdapter,
    OpenAIChatAdapter,
    OpenAIResponsesAdapter,
    XAIChatAdapter,
    XAIResponsesAdapter,
    get_adapter,
)
from quotaflow.providers._client import DEFAULT_TIMEOUT, resolve_api_key, resolve_base_url
from quotaflow.providers._core import (
    NO_RETRY,
    PreparedRequest,
    ProviderResult,
    RetryState,
    SSEDecoder,
    SSEEvent,
    StreamState,
    StreamUpdate,
    error_message,
    is_retryable_status,
    iter_sse,
    parse_retry_after,
    redact,
)

__all__ = [
    "ADAPTERS",
    "ANTHROPIC_DEFAULT_MAX_TOKENS",
    "ANTHROPIC_VERSION",
    "DEADLINE",
    "DEFAULT_TIMEOUT",
    "INITIAL_DELAY",
    "JITTER",
    "MAX_ATTEMPTS",
    "MAX_DELAY",
    "MULTIPLIER",
    "NO_RETRY",
    "Adapter",
    "AnthropicAdapter",
    "AsyncProviderClient",
    "AsyncProviderStream",
    "GeminiAdapter",
    "OpenAIChatAdapter",
    "OpenAIResponsesAdapter",
    "PreparedRequest",
    "ProviderClient",
    "ProviderResult",
    "ProviderStream",
    "RetryPolicy",
    "RetryState",
    "SSEDecoder",
    "SSEEvent",
    "StreamState",
    "StreamUpdate",
    "XAIChatAdapter",
    "XAIResponsesAdapter",
    "acall",
    "astream",
    "call",
    "error_message",
    "get_adapter",
    "is_retryable_status",
    "iter_sse",
    "parse_retry_after",
    "redact",
    "resolve_api_key",
    "resolve_base_url",
    "stream",
]
