"""The I/O-free parts shared by every adapter: request/result types, SSE decoding, retry
decisions, error messages and the stream state machine. Nothing here touches a socket."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from quotaflow._retry import (
    RetryPolicy,
)
from quotaflow.errors import ProviderError
from quotaflow.models import Usage
from quotaflow.usage import UsageAccumulator

if TYPE_CHECKING:
    from quotaflow.providers._adapters import Adapter

RETRYABLE_STATUS = frozenset({408, 409, 429})
"""Plus every 5xx (Anthropic's 529 "overloaded" included)."""


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the provider asks us to wait: ``retry-after-ms``, else ``Retry-After`` given as
    seconds or as an HTTP date. None when absent or unreadable; never negative."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


class RetryState:
    """The retry decisions of one call, shared by the sync and async I/O loops.

    The loops call :meth:`on_status` or :meth:`on_transport_error` after a failed attempt; each
    returns the seconds to sleep before the next attempt, or the :class:`ProviderError` to
    raise.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        provider: str,
        api_key: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.provider = provider
        self.api_key = api_key
        self.clock = clock
        self.rand = rand
        self.started = clock()
        self.attempts = 0

    def begin(self) -> None:
        self.attempts += 1

    def _give_up(
        self, message: str, status: int | None, retry_after: float | None
    ) -> ProviderError:
        elapsed = self.clock() - self.started
        p = self.policy
        return ProviderError(
            f"{message} (gave up after {self.attempts} attempt(s) in {elapsed:.1f}s; budget "
            f"{p.max_attempts} attempts within {p.deadline:g}s)",
            provider=self.provider,
            status=status,
            retryable=True,
            retry_after=retry_after,
        )

    def on_status(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> float | ProviderError:
        message = f"{self.provider} returned HTTP {status}: " + error_message(body, self.api_key)
        if not is_retryable_status(status):
            return ProviderError(message, provider=self.provider, status=status, retryable=False)
        retry_after = parse_retry_after(headers)
        delay = self.policy.next_delay(
            self.attempts, self.clock() - self.started, retry_after, self.rand()
        )
        if delay is None:
            return self._give_up(message, status, retry_after)
        return delay

    def on_transport_error(self, exc: BaseException, *, retryable: bool) -> float | ProviderError:
        what = (
            f"could not reach {self.provider}" if retryable else f"{self.provider} did not answer"
        )
        message = f"{what}: {type(exc).__name__}: " + redact(str(exc), self.api_key)
        if not retryable:
            return ProviderError(message, provider=self.provider, retryable=True)
        delay = self.policy.next_delay(
            self.attempts, self.clock() - self.started, None, self.rand()
        )
        if delay is None:
            return self._give_up(message, None, None)
        return delay


# --------------------------------------------------------------------------------------------
# Requests, results, errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest:
    """What an adapter wants sent: unpacks as ``method, path, headers, json``.

    ``path`` is relative to the provider's base URL and may carry a query string. The headers
    hold the API key, so they are left out of ``repr``.
    """

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    json: dict[str, Any]
    stream: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.method, self.path, self.headers, self.json))


class ProviderResult(BaseModel):
    """A completed (non-streaming) provider call."""

    model_config = ConfigDict(frozen=True)

    provider: str
    content: str
    """The generated text (text parts joined; reasoning/thought parts left out)."""
    usage: Usage
    """Normalised usage; ``estimated=True`` only when the provider reported none."""
    finish_reason: str | None = None
    """The provider's own value: ``stop``/``length`` (OpenAI, xAI), ``completed``/
    ``max_output_tokens`` (Responses API), ``end_turn``/``max_tokens`` (Anthropic),
    ``STOP``/``MAX_TOKENS`` (Gemini)."""
    model: str | None = None
    """The model name the provider answered with (may be a dated snapshot)."""
    embeddings: list[list[float]] | None = None
    """An embeddings call's vectors, one per input."""
    raw: dict[str, Any]
    """The provider's JSON body, unchanged."""


@dataclass(frozen=True)
class StreamUpdate:
    """What one decoded stream event means."""

    text: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    done: bool = False
    """The provider's terminal event arrived (``[DONE]``, ``message_stop``,
    ``response.completed``, Gemini's chunk with a ``finishReason``)."""
    error: ProviderError | None = None
    """An error the provider sent inside the stream."""


_KEYLIKE = re.compile(r"\b(?:sk|xai|sk-ant|AIza)[-_A-Za-z0-9]{12,}")


def redact(text: str, api_key: str = "") -> str:
    """``text`` without the API key or anything shaped like a provider key."""
    if api_key and len(api_key) >= 4:
        text = text.replace(api_key, "[redacted]")
    return _KEYLIKE.sub("[redacted]", text)


def error_message(body: bytes | str | Any, api_key: str = "", limit: int = 500) -> str:
    """The provider's error message from an error body (JSON or text), key redacted."""
    data: Any = body
    if isinstance(body, (bytes, bytearray)):
        data = bytes(body).decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return redact(data.strip()[:limit] or "(empty body)", api_key)
    if isinstance(data, list) and data:
        data = data[0]
    message: Any = None
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping):
            message = err.get("message") or err.get("type") or err.get("status")
        elif isinstance(err, str):
            message = err
        message = message or data.get("message") or data.get("detail")
    if not message:
        message = json.dumps(data)[:limit]
    return redact(str(message)[:limit], api_key)


def error_retryable(kind: Any) -> bool:
    """Whether an in-stream error type/status names a passing condition."""
    text = str(kind or "").lower()
    return any(
        k in text for k in ("overloaded", "rate_limit", "unavailable", "server", "internal", "api")
    )


# --------------------------------------------------------------------------------------------
# Server-sent events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    event: str | None
    data: str
    id: str | None = None


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder (WHATWG HTML "Server-sent events"): feed it
    lines without their terminators; a blank line dispatches the event being built. An event
    left unfinished at the end of the stream is discarded, as the standard says."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None

    def feed_line(self, line: str) -> SSEEvent | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and self._event is None:
                return None
            sse = SSEEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data = None, []
            return sse
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def iter_sse(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """All complete events in ``lines``."""
    decoder = SSEDecoder()
    for line in lines:
        sse = decoder.feed_line(line)
        if sse is not None:
            yield sse


DONE = "[DONE]"


def decode_sse(sse: SSEEvent) -> Any:
    """The JSON payload of an event, the string ``[DONE]``, or None for non-JSON data."""
    data = sse.data.strip()
    if not data:
        return None
    if data == DONE:
        return DONE
    try:
        return json.loads(data)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Stream state
# --------------------------------------------------------------------------------------------


class StreamState:
    """Everything a stream learns, independent of how its bytes arrive.

    The I/O shells feed it lines (:meth:`feed_line`) and tell it how the stream ended
    (:meth:`mark_eof`, :meth:`mark_broken`, :meth:`mark_abandoned`); it returns text deltas and
    holds usage, finish reason and completeness.
    """

    def __init__(self, adapter: Adapter, *, prompt_tokens_estimate: int | None = None) -> None:
        self.adapter = adapter
        self.provider = adapter.provider
        self.prompt_tokens_estimate = prompt_tokens_estimate
        self.decoder = SSEDecoder()
        self.accumulator = UsageAccumulator(adapter.provider)
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.started = False
        """A 2xx answer arrived: from here on the provider may bill."""
        self.done = False
        self.ended = False
        """No more events will be read (end of body, break, abandon or error)."""
        self.broken = False
        self.abandoned = False

    def feed_line(self, line: str) -> str | None:
        """Feed one line; the text delta it completes, if any. Raises the provider's in-stream
        error as :class:`ProviderError` (after marking the stream broken)."""
        sse = self.decoder.feed_line(line)
        if sse is None:
            return None
        data = decode_sse(sse)
        if data == DONE:
            self.done = True
            return None
        if not isinstance(data, Mapping):
            return None
        self.accumulator.add(data)
        update = self.adapter.parse_stream_event(data, sse.event)
        if update.model:
            self.model = update.model
        if update.finish_reason:
            self.finish_reason = update.finish_reason
        if update.done:
            self.done = True
        if update.error is not None:
            self.mark_broken()
            raise update.error
        if update.text:
            self.parts.append(update.text)
            return update.text
        return None

    def mark_eof(self) -> ProviderError | None:
        """The body ended cleanly; the error to raise if the provider's final event is missing."""
        self.ended = True
        if self.done:
            return None
        self.broken = True
        return ProviderError(
            f"{self.provider} stream ended before its final event; "
            f"{len(self.parts)} text chunk(s) received, usage estimated",
            provider=self.provider,
            retryable=True,
        )

    def mark_broken(self) -> None:
        self.ended = True
        if not self.done:
            self.broken = True

    def mark_abandoned(self) -> None:
        if not self.ended:
            self.ended = True
            if not self.done:
                self.abandoned = True

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def complete(self) -> bool:
        """The provider's terminal event arrived and nothing broke before it."""
        return self.done and not self.broken and not self.abandoned

    @property
    def usage(self) -> Usage:
        """The provider's usage when its final usage event arrived; otherwise input known so far
        (or the prompt estimate) + output estimated from the text received, ``estimated=True``.
        Zero when no 2xx answer was ever received (nothing was billed)."""
        if not self.started:
            return Usage()
        return self.accumulator.result(
            output_text=self.content, prompt_tokens_estimate=self.prompt_tokens_estimate
        )
