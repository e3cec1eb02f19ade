"""One adapter per provider API: pure functions from a request to HTTP, and from the
provider's JSON (a body or one stream event) back to text, usage and finish reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from quotaflow.errors import ConfigurationError, ProviderError, ValidationError
from quotaflow.models import AIModelRequest, Message, Usage, normalise_provider
from quotaflow.providers._core import (
    PreparedRequest,
    ProviderResult,
    StreamUpdate,
    error_message,
    error_retryable,
)
from quotaflow.tokens import estimate_text_tokens
from quotaflow.usage import extract_usage, find_usage

USER_AGENT = "quotaflow/0.1"

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; sent when the request names none (the Tracker normally
sets one so that its reservation is a bound)."""


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(d, Mapping):
            d = d.get(key)
        elif isinstance(d, Sequence) and not isinstance(d, str) and isinstance(key, int):
            d = d[key] if -len(d) <= key < len(d) else None
        else:
            return None
    return d


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _count(body: Mapping[str, Any], field: str, default: int | None) -> int | None:
    """A positive whole-number request field (a token cap or a choice count), or ``default``
    when absent; anything else is refused before a reservation is made."""
    value = body.get(field, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            f"{field} must be a positive integer (got {value!r})", field=f"extra.{field}"
        )
    return value


def _bound(cap: int | None, choices: int | None, cap_fields: str) -> int:
    if cap is None:
        raise ValidationError(
            f"the request sets no output cap ({cap_fields}): a reservation could not bound "
            "what the provider may bill",
            field="max_tokens",
        )
    return cap * (choices or 1)


_UNBOUNDED_FIELDS = ("best_of",)
"""Fields that make the provider generate (and bill) more than one answer but that the
adapters cannot bound: refused rather than under-reserved."""


class Adapter:
    """The pure half of a provider API. Subclasses set the class attributes and implement
    :meth:`build_request`, :meth:`parse_response` and :meth:`parse_stream_event`."""

    provider: ClassVar[str]
    api: ClassVar[str] = "chat"
    default_base_url: ClassVar[str]
    base_url_env: ClassVar[tuple[str, ...]]
    api_key_env: ClassVar[tuple[str, ...]]

    # -- requests ----------------------------------------------------------------------------

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        raise NotImplementedError

    def output_bound(self, body: Mapping[str, Any]) -> int:
        """The most output tokens (reasoning and thinking included) the provider may bill for
        this request body, every requested choice counted; ValidationError when the body
        leaves that unbounded. The reservation holds this much output."""
        raise NotImplementedError

    def _headers(self, api_key: str, stream: bool) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": USER_AGENT,
        }

    # -- responses ---------------------------------------------------------------------------

    def parse_response(
        self, body: Mapping[str, Any], *, prompt_tokens_estimate: int | None = None
    ) -> ProviderResult:
        """Text, usage, finish reason and model of a non-streaming answer.

        When the body carries no usage, the usage is estimated (``prompt_tokens_estimate`` +
        the text's estimate, ``estimated=True``) if an estimate is given, else
        :class:`~quotaflow.errors.ValidationError` is raised.
        """
        if not isinstance(body, Mapping):
            raise ProviderError(
                f"{self.provider} answered with a non-object JSON body",
                provider=self.provider,
                retryable=False,
            )
        content, finish, model = self._extract(body)
        if find_usage(self.provider, body) is not None:
            usage = extract_usage(self.provider, body)
        elif prompt_tokens_estimate is not None:
            usage = Usage(
                input_tokens=max(0, prompt_tokens_estimate),
                output_tokens=estimate_text_tokens(content),
                estimated=True,
            )
        else:
            usage = extract_usage(self.provider, body)  # raises ValidationError
        return ProviderResult(
            provider=self.provider,
            content=content,
            usage=usage,
            finish_reason=finish,
            model=model,
            embeddings=self.vectors(body),
            raw=dict(body),
        )

    def vectors(self, body: Mapping[str, Any]) -> list[list[float]] | None:
        """An embeddings answer's vectors; None for the other APIs."""
        return None

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        raise NotImplementedError

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        raise NotImplementedError

    def _stream_error(self, err: Any, default: str = "error") -> StreamUpdate:
        kind = _get(err, "type") or _get(err, "status") or _get(err, "code") or default
        status = _get(err, "code")
        return StreamUpdate(
            error=ProviderError(
                f"{self.provider} stream failed: {error_message({'error': err})}",
                provider=self.provider,
                status=status if isinstance(status, int) else None,
                retryable=error_retryable(kind),
            )
        )


def _text_of(content: Any) -> str:
    """Plain text of a message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            p if isinstance(p, str) else str(p.get("text") or "")
            for p in content
            if isinstance(p, (str, Mapping))
        )
    return ""


# --------------------------------------------------------------------------------------------
# OpenAI Chat Completions (and xAI, which speaks it)
# --------------------------------------------------------------------------------------------


class OpenAIChatAdapter(Adapter):
    """``POST {base}/chat/completions``, ``Authorization: Bearer``; streams ask for
    ``stream_options.include_usage`` so the final chunk carries usage."""

    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    base_url_env = ("QUOTAFLOW_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    api_key_env = ("OPENAI_API_KEY",)
    path = "/chat/completions"

    def _headers(self, api_key: str, stream: bool) -> dict[str, str]:
        return {**super()._headers(api_key, stream), "Authorization": f"Bearer {api_key}"}

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        stream = request.stream if stream is None else stream
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_completion_tokens"] = request.max_tokens
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(request.extra)
        if stream:  # usage must come back whatever extra says
            opts = body.get("stream_options")
            body["stream_options"] = {
                **(opts if isinstance(opts, Mapping) else {}),
                "include_usage": True,
            }
        return PreparedRequest("POST", self.path, self._headers(api_key, stream), body, stream)

    def output_bound(self, body: Mapping[str, Any]) -> int:
        # max_completion_tokens counts reasoning tokens; n answers are each billed.
        for field in _UNBOUNDED_FIELDS:
            if body.get(field) not in (None, 1):
                raise ValidationError(
                    f"{field} is not supported: its output cannot be bounded",
                    field=f"extra.{field}",
                )
        caps = [_count(body, f, None) for f in ("max_completion_tokens", "max_tokens")]
        cap = max((c for c in caps if c is not None), default=None)
        return _bound(cap, _count(body, "n", 1), "max_completion_tokens")

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        message = _get(body, "choices", 0, "message")
        content = _text_of(_get(message, "content")) or _str(_get(message, "refusal")) or ""
        return content, _str(_get(body, "choices", 0, "finish_reason")), _str(body.get("model"))

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        if event.get("error"):
            return self._stream_error(event["error"])
        choice = _get(event, "choices", 0)
        return StreamUpdate(
            text=_str(_get(choice, "delta", "content")),
            finish_reason=_str(_get(choice, "finish_reason")),
            model=_str(event.get("model")),
        )


class XAIChatAdapter(OpenAIChatAdapter):
    """xAI's OpenAI-compatible Chat Completions at ``https://api.x.ai/v1``."""

    provider = "xai"
    default_base_url = "https://api.x.ai/v1"
    base_url_env = ("QUOTAFLOW_XAI_BASE_URL", "XAI_BASE_URL")
    api_key_env = ("XAI_API_KEY",)


# --------------------------------------------------------------------------------------------
# OpenAI Responses API (and xAI's)
# --------------------------------------------------------------------------------------------


class OpenAIResponsesAdapter(OpenAIChatAdapter):
    """``POST {base}/responses``; usage arrives in ``response.completed`` when streaming."""

    api = "responses"
    path = "/responses"

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        stream = request.stream if stream is None else stream
        body: dict[str, Any] = {
            "model": request.model,
            "input": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_output_tokens"] = request.max_tokens
        if stream:
            body["stream"] = True
        body.update(request.extra)
        return PreparedRequest("POST", self.path, self._headers(api_key, stream), body, stream)

    @staticmethod
    def _finish(response: Any) -> str | None:
        status = _str(_get(response, "status"))
        if status == "incomplete":
            return _str(_get(response, "incomplete_details", "reason")) or status
        return status

    def output_bound(self, body: Mapping[str, Any]) -> int:
        # max_output_tokens counts reasoning tokens; the Responses API has one answer.
        return _bound(_count(body, "max_output_tokens", None), 1, "max_output_tokens")

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        texts: list[str] = []
        for item in body.get("output") or ():
            if isinstance(item, Mapping) and item.get("type") == "message":
                for part in item.get("content") or ():
                    if isinstance(part, Mapping) and part.get("type") == "output_text":
                        texts.append(str(part.get("text") or ""))
        content = "".join(texts) or _text_of(body.get("output_text"))
        return content, self._finish(body), _str(body.get("model"))

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        kind = event.get("type")
        response = event.get("response")
        model = _str(_get(response, "model"))
        if kind == "response.output_text.delta":
            return StreamUpdate(text=_str(event.get("delta")))
        if kind in ("response.completed", "response.incomplete"):
            return StreamUpdate(finish_reason=self._finish(response), model=model, done=True)
        if kind == "response.failed":
            return self._stream_error(_get(response, "error") or {"message": "response failed"})
        if kind == "error":
            return self._stream_error(event.get("error") or event)
        return StreamUpdate(model=model)


class XAIResponsesAdapter(OpenAIResponsesAdapter):
    provider = "xai"
    default_base_url = XAIChatAdapter.default_base_url
    base_url_env = XAIChatAdapter.base_url_env
    api_key_env = XAIChatAdapter.api_key_env


# --------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------


class AnthropicAdapter(Adapter):
    """``POST {base}/v1/messages`` with ``x-api-key`` and ``anthropic-version: 2023-06-01``;
    system messages become the top-level ``system``."""

    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"
    base_url_env = ("QUOTAFLOW_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL")
    api_key_env = ("ANTHROPIC_API_KEY",)
    path = "/v1/messages"

    def _headers(self, api_key: str, stream: bool) -> dict[str, str]:
        return {
            **super()._headers(api_key, stream),
            "x-api-key": api_key,
            "anthropic-version": ANTHROPIC_VERSION,
        }

    @staticmethod
    def _system(messages: Sequence[Message]) -> str | list[Any] | None:
        system = [m.content for m in messages if m.role in ("system", "developer")]
        if not system:
            return None
        if all(isinstance(c, str) for c in system):
            return "\n\n".join(str(c) for c in system)
        blocks: list[Any] = []
        for c in system:
            blocks.extend([{"type": "text", "text": c}] if isinstance(c, str) else c)
        return blocks

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        stream = request.stream if stream is None else stream
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or ANTHROPIC_DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": "assistant" if m.role == "assistant" else "user", "content": m.content}
                for m in request.messages
                if m.role not in ("system", "developer")
            ],
        }
        system = self._system(request.messages)
        if system is not None:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        body.update(request.extra)
        return PreparedRequest("POST", self.path, self._headers(api_key, stream), body, stream)

    def output_bound(self, body: Mapping[str, Any]) -> int:
        # Extended thinking's budget_tokens is part of max_tokens (it must be smaller).
        return _bound(_count(body, "max_tokens", None), 1, "max_tokens")

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        content = "".join(
            str(b.get("text") or "")
            for b in body.get("content") or ()
            if isinstance(b, Mapping) and b.get("type") == "text"
        )
        return content, _str(body.get("stop_reason")), _str(body.get("model"))

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        kind = event.get("type") or sse_event
        if kind == "content_block_delta":
            delta = event.get("delta")
            if _get(delta, "type") == "text_delta":
                return StreamUpdate(text=_str(_get(delta, "text")))
            return StreamUpdate()
        if kind == "message_start":
            return StreamUpdate(model=_str(_get(event, "message", "model")))
        if kind == "message_delta":
            return StreamUpdate(finish_reason=_str(_get(event, "delta", "stop_reason")))
        if kind == "message_stop":
            return StreamUpdate(done=True)
        if kind == "error":
            return self._stream_error(event.get("error") or event)
        return StreamUpdate()


# --------------------------------------------------------------------------------------------
# Google Gemini
# --------------------------------------------------------------------------------------------


class GeminiAdapter(Adapter):
    """``POST {base}/v1beta/models/{model}:generateContent`` (``:streamGenerateContent?alt=sse``
    when streaming) with ``x-goog-api-key``; system messages become ``systemInstruction``,
    ``assistant`` turns ``model`` turns."""

    provider = "google"
    default_base_url = "https://generativelanguage.googleapis.com"
    base_url_env = (
        "QUOTAFLOW_GOOGLE_BASE_URL",
        "QUOTAFLOW_GEMINI_BASE_URL",
        "GOOGLE_GEMINI_BASE_URL",
    )
    api_key_env = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    api_version = "v1beta"

    def _headers(self, api_key: str, stream: bool) -> dict[str, str]:
        return {**super()._headers(api_key, stream), "x-goog-api-key": api_key}

    @staticmethod
    def _parts(content: Any) -> list[Any]:
        if isinstance(content, str):
            return [{"text": content}]
        parts: list[Any] = []
        for p in content:
            if isinstance(p, str):
                parts.append({"text": p})
            elif isinstance(p, Mapping) and p.get("type") == "text" and "text" in p:
                parts.append({"text": p["text"]})
            else:
                parts.append(p)
        return parts

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        stream = request.stream if stream is None else stream
        model = request.model.removeprefix("models/")
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/{self.api_version}/models/{quote(model, safe='-._~')}:{method}"
        body: dict[str, Any] = {
            "contents": [
                {
                    "role": "model" if m.role in ("assistant", "model") else "user",
                    "parts": self._parts(m.content),
                }
                for m in request.messages
                if m.role not in ("system", "developer")
            ]
        }
        system = [
            p
            for m in request.messages
            if m.role in ("system", "developer")
            for p in self._parts(m.content)
        ]
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        body.update(request.extra)
        # The app's generation settings pass through; the output cap the reservation
        # assumed is kept.
        config = {**request.extra.get("generationConfig", {}), **config}
        if config:
            body["generationConfig"] = config
        return PreparedRequest("POST", path, self._headers(api_key, stream), body, stream)

    def output_bound(self, body: Mapping[str, Any]) -> int:
        # Thinking tokens are billed against maxOutputTokens; each candidate is billed.
        config = body.get("generationConfig")
        config = config if isinstance(config, Mapping) else {}
        cap = _count(config, "maxOutputTokens", None)
        return _bound(cap, _count(config, "candidateCount", 1), "generationConfig.maxOutputTokens")

    @staticmethod
    def _candidate_text(candidate: Any) -> str:
        return "".join(
            str(p.get("text") or "")
            for p in _get(candidate, "content", "parts") or ()
            if isinstance(p, Mapping) and not p.get("thought")
        )

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        candidate = _get(body, "candidates", 0)
        finish = _str(_get(candidate, "finishReason")) or _str(_get(candidate, "finish_reason"))
        if candidate is None and _get(body, "promptFeedback", "blockReason"):
            finish = _str(_get(body, "promptFeedback", "blockReason"))
        model = _str(body.get("modelVersion")) or _str(body.get("model_version"))
        return self._candidate_text(candidate), finish, model

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        if event.get("error"):
            return self._stream_error(event["error"])
        text, finish, model = self._extract(event)
        return StreamUpdate(
            text=text or None, finish_reason=finish, model=model, done=finish is not None
        )


# --------------------------------------------------------------------------------------------
# Embeddings (OpenAI /embeddings, Gemini :batchEmbedContents): billed on input tokens only
# --------------------------------------------------------------------------------------------


def _float_vectors(vectors: Any) -> list[list[float]] | None:
    """The vectors when every one is a list of numbers, else None: a shape this does not know
    must not fail the call after the provider answered (its usage is still recorded)."""
    out = []
    for v in vectors:
        if not isinstance(v, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        ):
            return None
        out.append([float(x) for x in v])
    return out


def _embedding_inputs(request: AIModelRequest) -> list[str]:
    """The texts to embed: one per message, in order."""
    return [_text_of(m.content) for m in request.messages]


class _EmbeddingsMixin:
    """Embeddings produce no tokens: nothing is reserved for output, streams do not exist."""

    api: ClassVar[str] = "embeddings"

    def output_bound(self, body: Mapping[str, Any]) -> int:
        return 0

    def parse_stream_event(
        self, event: Mapping[str, Any], sse_event: str | None = None
    ) -> StreamUpdate:
        raise ValidationError("embeddings do not stream", field="stream")


class OpenAIEmbeddingsAdapter(_EmbeddingsMixin, OpenAIChatAdapter):
    """``POST {base}/embeddings`` with every message's text as one input."""

    path = "/embeddings"

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        if request.stream or stream:
            raise ValidationError("embeddings do not stream", field="stream")
        if request.extra.get("encoding_format", "float") != "float":
            raise ValidationError(
                "only float embeddings are returned (encoding_format: float)",
                field="extra.encoding_format",
            )
        body: dict[str, Any] = {"model": request.model, "input": _embedding_inputs(request)}
        body.update(request.extra)
        return PreparedRequest("POST", self.path, self._headers(api_key, False), body, False)

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        return "", None, _str(body.get("model"))

    def vectors(self, body: Mapping[str, Any]) -> list[list[float]] | None:
        data = body.get("data")
        items = [d for d in data if isinstance(d, Mapping)] if isinstance(data, list) else []
        items.sort(key=lambda d: int(d["index"]) if isinstance(d.get("index"), int) else 0)
        return _float_vectors(d.get("embedding") for d in items)


class GeminiEmbeddingsAdapter(_EmbeddingsMixin, GeminiAdapter):
    """``POST {base}/v1beta/models/{model}:embedContent`` for one message,
    ``:batchEmbedContents`` (one request per message) for several. The answer reports no
    token counts: the input is estimated (``estimated=True``)."""

    def build_request(
        self, request: AIModelRequest, *, api_key: str = "", stream: bool | None = None
    ) -> PreparedRequest:
        if request.stream or stream:
            raise ValidationError("embeddings do not stream", field="stream")
        model = request.model.removeprefix("models/")
        requests = [
            {"model": f"models/{model}", "content": {"parts": [{"text": text}]}, **request.extra}
            for text in _embedding_inputs(request)
        ]
        single = len(requests) == 1
        method = "embedContent" if single else "batchEmbedContents"
        path = f"/{self.api_version}/models/{quote(model, safe='-._~')}:{method}"
        body: dict[str, Any] = requests[0] if single else {"requests": requests}
        return PreparedRequest("POST", path, self._headers(api_key, False), body, False)

    def _extract(self, body: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        return "", None, None

    def vectors(self, body: Mapping[str, Any]) -> list[list[float]] | None:
        one = body.get("embedding")  # embedContent
        items = body.get("embeddings") if one is None else [one]
        items = items if isinstance(items, list) else []
        return _float_vectors(e.get("values") for e in items if isinstance(e, Mapping))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

ADAPTERS: dict[tuple[str, str], Adapter] = {
    ("openai", "chat"): OpenAIChatAdapter(),
    ("openai", "responses"): OpenAIResponsesAdapter(),
    ("xai", "chat"): XAIChatAdapter(),
    ("xai", "responses"): XAIResponsesAdapter(),
    ("anthropic", "chat"): AnthropicAdapter(),
    ("google", "chat"): GeminiAdapter(),
    ("openai", "embeddings"): OpenAIEmbeddingsAdapter(),
    ("google", "embeddings"): GeminiEmbeddingsAdapter(),
}


def get_adapter(provider: str, api: str = "chat") -> Adapter:
    """The adapter for ``provider`` (aliases such as ``gemini`` or ``grok`` accepted) and
    ``api`` (``chat`` or ``responses``; the Responses API exists for OpenAI and xAI only)."""
    p = normalise_provider(provider)
    adapter = ADAPTERS.get((p, api))
    if adapter is None:
        if any(key[0] == p for key in ADAPTERS):
            raise ValidationError(f"provider {p} has no {api!r} API", field="api")
        raise ConfigurationError(f"no adapter for provider {provider!r}")
    return adapter
