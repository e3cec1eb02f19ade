"""A loopback HTTP server that speaks the wire formats of OpenAI, Anthropic, Gemini and xAI.

It is the test double for "the outside world" (design.md): quotaflow's own adapters and the
official SDKs can be pointed at it, e.g. ::

    with FakeProviderServer(usage=Usage(input_tokens=30, output_tokens=7)) as fake:
        openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x")           # OpenAI and xAI
        anthropic.Anthropic(base_url=fake.url, api_key="x")
        genai.Client(api_key="x", http_options=types.HttpOptions(base_url=fake.url))
        fake.fail_next(429, retry_after="0")      # script outcomes, consumed in order
        fake.cut_next_stream(after_chunks=2)      # drop the connection mid-stream
        assert fake.request_count("messages") == 0

Routes (POST): ``/v1/chat/completions`` (OpenAI and xAI Chat Completions, streaming with
``stream_options.include_usage``), ``/v1/responses`` (Responses API, streaming events),
``/v1/messages`` (Anthropic Messages, streaming events), ``/v1beta/models/{model}:generateContent``
and ``:streamGenerateContent`` (SSE with ``alt=sse``, a JSON array without); ``/v1/models/...``
too, which google-genai 3.x uses by default. Embeddings: ``/v1/embeddings`` (OpenAI: usage's
``input_tokens`` as ``prompt_tokens``), ``:embedContent`` and ``:batchEmbedContents`` (Gemini:
no token counts, as the real API).

The usage to report is given *normalised* (:class:`quotaflow.models.Usage`) and written in each
provider's own semantics: Anthropic's ``input_tokens`` excludes cache reads and writes; Gemini's
``candidatesTokenCount`` excludes ``thoughtsTokenCount``; xAI (any model whose name starts with
``grok``) reports ``reasoning_tokens`` beside ``completion_tokens``, OpenAI inside it. Gemini has
no cache-write counter, so ``cache_write_tokens`` is not reported there.

Streams use HTTP/1.1 chunked transfer encoding; a scripted cut closes the socket without the
terminating chunk (the client sees a broken body), or with ``clean=True`` ends the body
properly but without the provider's final events.

Standalone, for the offline demo: ``python -m quotaflow.testing.fake_provider --port 8787``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from quotaflow.models import Usage

__all__ = ["DEFAULT_REPLY", "FakeProviderServer", "Outcome", "RecordedRequest", "main"]

DEFAULT_REPLY = "Hello from the fake provider."

ROUTES = (
    "chat.completions",
    "responses",
    "messages",
    "generateContent",
    "streamGenerateContent",
    "embeddings",
    "embedContent",
    "batchEmbedContents",
)

_GEMINI_PATH = re.compile(
    r"^/(?:v1beta|v1|v1alpha)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$"
)

# HTTP status -> (OpenAI/Anthropic error type, Google status).
_ERROR_KINDS = {
    400: ("invalid_request_error", "INVALID_ARGUMENT"),
    401: ("authentication_error", "UNAUTHENTICATED"),
    403: ("permission_error", "PERMISSION_DENIED"),
    404: ("not_found_error", "NOT_FOUND"),
    408: ("timeout_error", "DEADLINE_EXCEEDED"),
    413: ("request_too_large", "INVALID_ARGUMENT"),
    429: ("rate_limit_error", "RESOURCE_EXHAUSTED"),
    500: ("api_error", "INTERNAL"),
    502: ("api_error", "UNAVAILABLE"),
    503: ("overloaded_error", "UNAVAILABLE"),
    529: ("overloaded_error", "UNAVAILABLE"),
}


@dataclass(frozen=True)
class Outcome:
    """One scripted answer; queued outcomes are consumed one per matching request."""

    kind: str = "ok"
    """``ok``, ``error`` (a status with the provider's error body) or ``cut`` (streams only)."""
    status: int = 200
    retry_after: str | None = None
    """Value of the ``Retry-After`` header: seconds (``"0"``) or an HTTP date."""
    message: str | None = None
    after_chunks: int = 1
    """For ``cut``: how many text chunks are delivered before the stream stops."""
    clean: bool = False
    """For ``cut``: end the chunked body properly (no final events) instead of dropping it."""
    route: str | None = None
    """Only a request to this route (one of ``ROUTES``) consumes the outcome; None: any."""
    latency: float | None = None
    """Seconds to wait before answering; None: the server's ``latency``."""

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: str | float | None = None,
        message: str | None = None,
        route: str | None = None,
    ) -> Outcome:
        ra = None if retry_after is None else str(retry_after)
        return cls("error", status, ra, message, route=route)

    @classmethod
    def cut(
        cls, after_chunks: int = 1, *, clean: bool = False, route: str | None = None
    ) -> Outcome:
        return cls("cut", 200, after_chunks=after_chunks, clean=clean, route=route)


@dataclass
class RecordedRequest:
    """A request the server received."""

    route: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)
    answered_at: float | None = None
    """``time.monotonic()`` when a 2xx answer was written whole (None: an error, or the client
    was gone)."""


# --------------------------------------------------------------------------------------------
# Wire-format builders (pure): normalised Usage -> each provider's fields
# --------------------------------------------------------------------------------------------


def openai_usage(u: Usage, *, xai: bool = False) -> dict[str, Any]:
    """Chat Completions usage; xAI reports reasoning beside completion_tokens."""
    completion = u.output_tokens - u.reasoning_tokens if xai else u.output_tokens
    prompt_details: dict[str, Any] = {
        "cached_tokens": u.cached_input_tokens,
        "audio_tokens": u.details.get("audio_input", 0),
    }
    if u.cache_write_tokens:
        prompt_details["cache_write_tokens"] = u.cache_write_tokens
    if xai:
        prompt_details.update(text_tokens=u.input_tokens, image_tokens=0)
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": completion,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": u.details.get("audio_output", 0),
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def anthropic_usage(u: Usage) -> dict[str, Any]:
    """``input_tokens`` excludes cache reads and writes, as Anthropic reports it."""
    out: dict[str, Any] = {
        "input_tokens": u.input_tokens - u.cached_input_tokens - u.cache_write_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "output_tokens": u.output_tokens,
    }
    if "cache_write_1h" in u.details:
        one_hour = u.details["cache_write_1h"]
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": u.cache_write_tokens - one_hour,
            "ephemeral_1h_input_tokens": one_hour,
        }
    if "web_search" in u.details:
        out["server_tool_use"] = {"web_search_requests": u.details["web_search"]}
    if u.service_tier:
        out["service_tier"] = u.service_tier
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def gemini_usage(u: Usage, *, candidates: int | None = None) -> dict[str, Any]:
    """``candidatesTokenCount`` excludes thoughts; ``promptTokenCount`` includes cached content."""
    cand = u.output_tokens - u.reasoning_tokens if candidates is None else candidates
    out: dict[str, Any] = {
        "promptTokenCount": u.input_tokens,
        "candidatesTokenCount": cand,
        "totalTokenCount": u.input_tokens + cand + u.reasoning_tokens,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": u.input_tokens - u.details.get("audio_input", 0)},
            *(
                [{"modality": "AUDIO", "tokenCount": u.details["audio_input"]}]
                if "audio_input" in u.details
                else []
            ),
        ],
    }
    if u.cached_input_tokens:
        out["cachedContentTokenCount"] = u.cached_input_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    return out


def split_reply(text: str) -> list[str]:
    """The text chunks a stream delivers: one per word with its trailing whitespace."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeProviderServer:
    """A threaded HTTP server on loopback speaking the four providers' wire formats.

    Configure per test: ``usage`` (normalised, see module docstring), ``reply_text``,
    ``latency`` (seconds before answering), ``chunk_delay`` (seconds between stream events),
    ``truncated`` (answer with the provider's "max tokens reached" finish reason), and scripted
    failures via :meth:`script`, :meth:`fail_next` and :meth:`cut_next_stream`. Counts
    requests in total and per route (:meth:`request_count`). Thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        usage: Usage | None = None,
        reply_text: str = DEFAULT_REPLY,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        truncated: bool = False,
    ) -> None:
        self._lock = threading.Lock()
        self._usage = usage or Usage(input_tokens=20, output_tokens=10)
        self._reply_text = reply_text
        self._latency = latency
        self._chunk_delay = chunk_delay
        self._truncated = truncated
        self._outcomes: deque[Outcome] = deque()
        self._counts: Counter[str] = Counter()
        self._requests: list[RecordedRequest] = []
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None

    # -- configuration (all guarded by the lock) ----------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def usage(self) -> Usage:
        with self._lock:
            return self._usage

    @usage.setter
    def usage(self, value: Usage) -> None:
        with self._lock:
            self._usage = value

    @property
    def reply_text(self) -> str:
        with self._lock:
            return self._reply_text

    @reply_text.setter
    def reply_text(self, value: str) -> None:
        with self._lock:
            self._reply_text = value

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        with self._lock:
            self._latency = value

    @property
    def chunk_delay(self) -> float:
        with self._lock:
            return self._chunk_delay

    @chunk_delay.setter
    def chunk_delay(self, value: float) -> None:
        with self._lock:
            self._chunk_delay = value

    @property
    def truncated(self) -> bool:
        with self._lock:
            return self._truncated

    @truncated.setter
    def truncated(self, value: bool) -> None:
        with self._lock:
            self._truncated = value

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes; each is consumed by the next request to its route (or any route)."""
        with self._lock:
            self._outcomes.extend(outcomes)

    def fail_next(
        self,
        status: int,
        *,
        retry_after: str | float | None = None,
        times: int = 1,
        message: str | None = None,
        route: str | None = None,
    ) -> None:
        """The next ``times`` requests answer ``status`` with the provider's error body."""
        self.script(
            *(Outcome.error(status, retry_after=retry_after, message=message, route=route),) * times
        )

    def cut_next_stream(
        self, after_chunks: int = 1, *, clean: bool = False, route: str | None = None
    ) -> None:
        """The next stream stops after ``after_chunks`` text chunks, before its final usage."""
        self.script(Outcome.cut(after_chunks, clean=clean, route=route))

    def pending_outcomes(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def reset(self) -> None:
        """Forget scripted outcomes, counters and recorded requests."""
        with self._lock:
            self._outcomes.clear()
            self._counts.clear()
            self._requests.clear()

    # -- observation ----------------------------------

    def request_count(self, route: str | None = None) -> int:
        """Requests received in total, or to one route (``chat.completions``, ``responses``,
        ``messages``, ``generateContent``, ``streamGenerateContent``)."""
        with self._lock:
            return sum(self._counts.values()) if route is None else self._counts[route]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    # -- internals used by the handler ----------------------------------

    def _record(self, req: RecordedRequest) -> Outcome:
        with self._lock:
            self._counts[req.route] += 1
            self._requests.append(req)
            for i, outcome in enumerate(self._outcomes):
                if outcome.route is None or outcome.route == req.route:
                    del self._outcomes[i]
                    return outcome
            return Outcome()

    def _snapshot(self) -> tuple[Usage, str, float, float, bool]:
        with self._lock:
            return (
                self._usage,
                self._reply_text,
                self._latency,
                self._chunk_delay,
                self._truncated,
            )

    # -- lifecycle ----------------------------------

    def start(self) -> FakeProviderServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.01},
                name=f"fake-provider-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of concurrent clients (the SDKs'
    # pools, the fault tests' threads) overflowed it and saw connections reset.
    request_queue_size = 128
    block_on_close = False
    fake: FakeProviderServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-stream (abandoned or cut streams) are expected here.
        pass


# A stream event: (SSE event name or None, payload dict or the literal "[DONE]", is text).
_Event = tuple[str | None, Any, bool]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "quotaflow-fake-provider/1"

    def setup(self) -> None:
        super().setup()
        # Headers and body (and each stream event) are separate small writes: without
        # TCP_NODELAY, Nagle + delayed ACK add ~40 ms per answer on loopback.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing ----------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, events: list[_Event], outcome: Outcome, delay: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        crlf = self._route == "streamGenerateContent"  # Gemini separates events with \r\n\r\n
        sep = "\r\n" if crlf else "\n"
        texts = 0
        try:
            for name, payload, is_text in events:
                if outcome.kind == "cut" and texts >= outcome.after_chunks:
                    break
                data = payload if isinstance(payload, str) else json.dumps(payload)
                frame = (f"event: {name}{sep}" if name else "") + f"data: {data}{sep}{sep}"
                self._write_chunk(frame.encode())
                texts += int(is_text)
                if delay:
                    time.sleep(delay)
            if outcome.kind == "cut" and not outcome.clean:
                self.close_connection = True  # drop the socket without the final 0-chunk
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _error(self, flavour: str, outcome: Outcome) -> None:
        status = outcome.status
        kind, g_status = _ERROR_KINDS.get(status, ("api_error", "UNKNOWN"))
        message = outcome.message or f"fake provider scripted error {status}"
        if flavour == "anthropic":
            body: Any = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": f"req_{uuid.uuid4().hex[:16]}",
            }
        elif flavour == "google":
            body = {"error": {"code": status, "message": message, "status": g_status}}
        else:
            if kind == "api_error":
                kind = "server_error"
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        headers = {"Retry-After": outcome.retry_after} if outcome.retry_after is not None else {}
        self._send_json(status, body, headers)

    # -- dispatch ----------------------------------

    def do_GET(self) -> None:
        self._send_json(404, {"error": {"message": f"no route GET {self.path}"}})

    def do_POST(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        body = self._read_body()
        flavour, model = "openai", ""
        gemini = _GEMINI_PATH.match(path)
        if path == "/v1/chat/completions":
            route = "chat.completions"
        elif path == "/v1/responses":
            route = "responses"
        elif path == "/v1/messages":
            route, flavour = "messages", "anthropic"
        elif path == "/v1/embeddings":
            route = "embeddings"
        elif gemini and gemini["method"] in (
            "generateContent",
            "streamGenerateContent",
            "embedContent",
            "batchEmbedContents",
        ):
            route, flavour, model = gemini["method"], "google", gemini["model"]
        else:
            self._send_json(404, {"error": {"message": f"no route POST {path}"}})
            return
        self._route = route
        fake = self.server.fake
        headers = {k.lower(): v for k, v in self.headers.items()}
        recorded = RecordedRequest(route, self.path, headers, body)
        outcome = fake._record(recorded)
        usage, text, latency, delay, truncated = fake._snapshot()
        wait = latency if outcome.latency is None else outcome.latency
        if wait:
            time.sleep(wait)
        if outcome.kind == "error":
            self._error(flavour, outcome)
            return
        if not isinstance(body, dict):
            self._error(flavour, Outcome.error(400, message="request body is not a JSON object"))
            return
        model = model or str(body.get("model") or "fake-model")
        try:
            if route == "chat.completions":
                self._chat(body, model, usage, text, truncated, outcome, delay)
            elif route == "responses":
                self._responses(body, model, usage, text, truncated, outcome, delay)
            elif route == "messages":
                self._messages(body, model, usage, text, truncated, outcome, delay)
            elif route in ("embeddings", "embedContent", "batchEmbedContents"):
                self._embeddings(route, body, model, usage)
            else:
                sse = query.get("alt", [""])[0] == "sse"
                self._gemini(route, sse, model, usage, text, truncated, outcome, delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        else:
            if outcome.kind == "ok":
                recorded.answered_at = time.monotonic()

    # -- Embeddings -----------------------------------------------------

    def _embeddings(self, route: str, body: dict[str, Any], model: str, usage: Usage) -> None:
        def vector(i: int) -> list[float]:
            return [round(0.125 * (i + 1) * k, 3) for k in range(1, 9)]

        if route == "embeddings":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": vector(i)}
                        for i in range(count)
                    ],
                    "model": model,
                    "usage": {
                        "prompt_tokens": usage.input_tokens,
                        "total_tokens": usage.input_tokens,
                    },
                },
            )
            return
        if route == "embedContent":
            self._send_json(200, {"embedding": {"values": vector(0)}})
            return
        requests = body.get("requests")
        count = len(requests) if isinstance(requests, list) else 0
        self._send_json(200, {"embeddings": [{"values": vector(i)} for i in range(count)]})

    # -- OpenAI / xAI Chat Completions ----------------------------------

    def _chat(
        self,
        body: dict[str, Any],
        model: str,
        usage: Usage,
        text: str,
        truncated: bool,
        outcome: Outcome,
        delay: float,
    ) -> None:
        xai = model.lower().startswith("grok")
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        finish = "length" if truncated else "stop"
        wire_usage = openai_usage(usage, xai=xai)
        base = {"id": cid, "created": created, "model": model, "system_fingerprint": "fp_fake"}
        if not body.get("stream"):
            self._send_json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": wire_usage,
                    **({"service_tier": usage.service_tier} if usage.service_tier else {}),
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            c: dict[str, Any] = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                c["usage"] = None
            return c

        events: list[_Event] = [(None, chunk({"role": "assistant", "content": ""}, None), False)]
        events += [(None, chunk({"content": piece}, None), True) for piece in split_reply(text)]
        events.append((None, chunk({}, finish), False))
        if include_usage:
            events.append(
                (
                    None,
                    {**base, "object": "chat.completion.chunk", "choices": [], "usage": wire_usage},
                    False,
                )
            )
        events.append((None, "[DONE]", False))
        self._send_stream(events, outcome, delay)

    # -- OpenAI Responses API ----------------------------------

    def _responses(
        self,
        body: dict[str, Any],
        model: str,
        usage: Usage,
        text: str,
        truncated: bool,
        outcome: Outcome,
        delay: float,
    ) -> None:
        rid = f"resp_{uuid.uuid4().hex[:24]}"
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        status = "incomplete" if truncated else "completed"

        def response(state: str, content: str | None, with_usage: bool) -> dict[str, Any]:
            output: list[Any] = []
            if content is not None:
                output.append(
                    {
                        "type": "message",
                        "id": mid,
                        "status": "incomplete" if truncated else "completed",
                        "role": "assistant",
                        "content": [
                            {
                                "type": "output_text",
                                "text": content,
                                "annotations": [],
                                "logprobs": [],
                            }
                        ],
                    }
                )
            return {
                "id": rid,
                "object": "response",
                "created_at": created,
                "status": state,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if truncated and state != "in_progress"
                else None,
                "instructions": None,
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "temperature": body.get("temperature", 1.0),
                "tool_choice": "auto",
                "tools": [],
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": responses_usage(usage) if with_usage else None,
                "metadata": {},
            }

        if not body.get("stream"):
            self._send_json(200, response(status, text, True))
            return
        seq = iter(range(10_000))
        item = {
            "type": "message",
            "id": mid,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events: list[_Event] = []

        def ev(kind: str, is_text: bool = False, **fields: Any) -> None:
            events.append((kind, {"type": kind, "sequence_number": next(seq), **fields}, is_text))

        ev("response.created", response=response("in_progress", None, False))
        ev("response.in_progress", response=response("in_progress", None, False))
        ev("response.output_item.added", output_index=0, item=item)
        ev("response.content_part.added", item_id=mid, output_index=0, content_index=0, part=part)
        for piece in split_reply(text):
            ev(
                "response.output_text.delta",
                True,
                item_id=mid,
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
        ev(
            "response.output_text.done",
            item_id=mid,
            output_index=0,
            content_index=0,
            text=text,
            logprobs=[],
        )
        ev(
            "response.content_part.done",
            item_id=mid,
            output_index=0,
            content_index=0,
            part={**part, "text": text},
        )
        ev(
            "response.output_item.done",
            output_index=0,
            item={**item, "status": "completed", "content": [{**part, "text": text}]},
        )
        final = "response.incomplete" if truncated else "response.completed"
        ev(final, response=response(status, text, True))
        self._send_stream(events, outcome, delay)

    # -- Anthropic Messages ----------------------------------

    def _messages(
        self,
        body: dict[str, Any],
        model: str,
        usage: Usage,
        text: str,
        truncated: bool,
        outcome: Outcome,
        delay: float,
    ) -> None:
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        stop = "max_tokens" if truncated else "end_turn"
        wire_usage = anthropic_usage(usage)
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": wire_usage,
        }
        if not body.get("stream"):
            self._send_json(200, message)
            return
        start_usage = {**wire_usage, "output_tokens": min(1, usage.output_tokens)}
        start_usage.pop("output_tokens_details", None)
        events: list[_Event] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "usage": start_usage,
                    },
                },
                False,
            ),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                False,
            ),
            ("ping", {"type": "ping"}, False),
        ]
        for piece in split_reply(text):
            events.append(
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                    True,
                )
            )
        delta_usage: dict[str, Any] = {"output_tokens": usage.output_tokens}
        if usage.reasoning_tokens:
            delta_usage["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}, False),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": delta_usage,
                },
                False,
            ),
            ("message_stop", {"type": "message_stop"}, False),
        ]
        self._send_stream(events, outcome, delay)

    # -- Google Gemini ----------------------------------

    def _gemini(
        self,
        route: str,
        sse: bool,
        model: str,
        usage: Usage,
        text: str,
        truncated: bool,
        outcome: Outcome,
        delay: float,
    ) -> None:
        finish = "MAX_TOKENS" if truncated else "STOP"
        rid = uuid.uuid4().hex[:20]

        def response(content: str, finish_reason: str | None, cand: int | None) -> dict[str, Any]:
            candidate: dict[str, Any] = {
                "content": {"parts": [{"text": content}], "role": "model"},
                "index": 0,
            }
            if finish_reason:
                candidate["finishReason"] = finish_reason
            return {
                "candidates": [candidate],
                "usageMetadata": gemini_usage(usage, candidates=cand),
                "modelVersion": model,
                "responseId": rid,
            }

        if route == "generateContent":
            self._send_json(200, response(text, finish, None))
            return
        pieces = split_reply(text)
        visible = usage.output_tokens - usage.reasoning_tokens
        chunks = [
            response(
                piece,
                finish if i == len(pieces) - 1 else None,
                None if i == len(pieces) - 1 else math.ceil(visible * (i + 1) / len(pieces)),
            )
            for i, piece in enumerate(pieces)
        ]
        if not sse:  # without alt=sse the API answers one JSON array of the chunks
            if outcome.kind == "cut":
                chunks = chunks[: outcome.after_chunks]
            self._send_json(200, chunks)
            return
        events: list[_Event] = [(None, c, True) for c in chunks]
        self._send_stream(events, outcome, delay)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m quotaflow.testing.fake_provider",
        description="Serve the OpenAI, Anthropic, Gemini and xAI wire formats on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--text", default=DEFAULT_REPLY, help="the reply every model gives")
    parser.add_argument("--input-tokens", type=int, default=20)
    parser.add_argument("--output-tokens", type=int, default=10)
    parser.add_argument("--cached-input-tokens", type=int, default=0)
    parser.add_argument("--cache-write-tokens", type=int, default=0)
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the fake provider until interrupted."""
    args = _parse_args(argv)
    usage = Usage(
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        cached_input_tokens=args.cached_input_tokens,
        cache_write_tokens=args.cache_write_tokens,
        reasoning_tokens=args.reasoning_tokens,
    )
    server = FakeProviderServer(
        host=args.host, port=args.port, usage=usage, reply_text=args.text, latency=args.latency
    )
    server.start()
    print(f"quotaflow fake provider listening on {server.url}", flush=True)
    print(
        f"  OpenAI/xAI base URL {server.url}/v1 · Anthropic {server.url} · Gemini {server.url}",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
