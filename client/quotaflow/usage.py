"""Normalise the token usage each provider reports into :class:`quotaflow.models.Usage`.

``extract_usage(provider, response)`` accepts a raw dict, JSON text (``str``/``bytes``), or an
official SDK object (anything with ``model_dump()``/``to_dict()``: openai ``ChatCompletion``,
``ChatCompletionChunk``, ``CompletionUsage``, ``Response``, ``ResponseUsage``,
``ResponseCompletedEvent``; anthropic ``Message``, ``Usage``, ``RawMessageStartEvent``,
``RawMessageDeltaEvent``; google-genai ``GenerateContentResponse``,
``GenerateContentResponseUsageMetadata``), either the whole response or only its usage part,
and a list of stream events (folded with :class:`UsageAccumulator`). SDK objects are turned
into dicts first; there is one dict-based code path. When no usage can be found it raises
:class:`quotaflow.errors.ValidationError`: a missing usage never silently becomes $0 (the
caller decides to estimate and flag ``estimated=True``).

Normalised meaning (see :class:`~quotaflow.models.Usage`): ``input_tokens`` counts every
prompt token including cache reads and writes, which ``cached_input_tokens`` and
``cache_write_tokens`` break down; ``output_tokens`` counts every generated token including
reasoning, which ``reasoning_tokens`` breaks down.

Provider rules and where they come from
---------------------------------------
OpenAI, Chat Completions (``usage`` of ``/v1/chat/completions``; ``CompletionUsage`` in
openai-python ``types/completion_usage.py``)
    input = ``prompt_tokens``; cached = ``prompt_tokens_details.cached_tokens`` ("Cached tokens
    present in the prompt", a part of ``prompt_tokens``); cache writes =
    ``prompt_tokens_details.cache_write_tokens`` when present; output = ``completion_tokens``,
    which already includes ``completion_tokens_details.reasoning_tokens`` (the SDK: predicted
    tokens, "like reasoning tokens, ... are still counted in the total completion tokens for
    purposes of billing"; ``total_tokens`` is "prompt + completion", e.g. a GPT-5 answer with
    prompt 1486 + completion 651 = total 2137 of which 512 reasoning).
OpenAI, Responses (``usage`` of ``/v1/responses``; ``ResponseUsage`` in
``types/responses/response_usage.py``)
    input = ``input_tokens``; cached = ``input_tokens_details.cached_tokens``; cache writes =
    ``input_tokens_details.cache_write_tokens``; output = ``output_tokens`` (includes
    ``output_tokens_details.reasoning_tokens``). In a stream the usage arrives in the
    ``response.completed`` event as ``response.usage``.
xAI (OpenAI-compatible, both shapes; docs.x.ai "Prompt Caching > Usage & Pricing")
    cached = ``prompt_tokens_details.cached_tokens`` / ``input_tokens_details.cached_tokens``,
    included in the prompt count. Unlike OpenAI, xAI reports reasoning tokens *beside*
    ``completion_tokens``: Google Cloud's "Reasoning for Grok models" page says "The reasoning
    token count is outputted in the reasoning_tokens field, separated from the
    completion_tokens", with the example prompt 663 + completion 50 + reasoning 124 =
    total 837 (also reported in "Grok 3 API - Reasoning Tokens are Counted Differently",
    dev.to/maximsaplin). Some gateways re-shape it to OpenAI's convention, so the rule is
    decided per response, for every OpenAI-shaped usage: when ``total_tokens`` equals
    prompt + completion + reasoning, or when reasoning exceeds completion, reasoning is
    outside and output = completion + reasoning; when ``total_tokens`` equals
    prompt + completion, it is inside. Without ``total_tokens`` xAI is taken as outside and
    OpenAI as inside.
Anthropic Messages (``usage`` of ``/v1/messages``; anthropic-sdk ``types/usage.py``;
platform.claude.com "Rate limits" and "Prompt caching")
    "The ``input_tokens`` field only represents tokens that appear after your last cache
    breakpoint ... ``total_input_tokens = cache_read_input_tokens +
    cache_creation_input_tokens + input_tokens``": input = the sum of the three.
    cached = ``cache_read_input_tokens``; cache writes = ``cache_creation_input_tokens`` (or
    the sum of ``cache_creation.ephemeral_*_input_tokens`` when only the breakdown is given);
    output = ``output_tokens``, which includes thinking
    (``output_tokens_details.thinking_tokens``: "output_tokens remains the inclusive,
    authoritative total used for billing"). Streams: ``message_start`` carries
    ``message.usage`` (input and cache counts), ``message_delta`` carries ``usage`` with
    *cumulative* counts (``MessageDeltaUsage``: "The cumulative number of output tokens"), so
    later values replace earlier ones.
Google Gemini (``usageMetadata`` of ``generateContent``; google-genai ``types.py``
``GenerateContentResponseUsageMetadata``; ai.google.dev API reference ``UsageMetadata``)
    ``promptTokenCount`` "When cached_content is set, ... also includes the number of tokens
    in the cached content"; ``totalTokenCount`` "is the sum of prompt_token_count,
    candidates_token_count, tool_use_prompt_token_count, and thoughts_token_count", so
    ``candidatesTokenCount`` excludes thoughts and the prompt excludes tool-use results.
    input = ``promptTokenCount`` + ``toolUsePromptTokenCount`` (tool results are fed to the
    model as input); cached = ``cachedContentTokenCount``; output = ``candidatesTokenCount``
    + ``thoughtsTokenCount`` (thinking is billed at the output rate, Gemini pricing page);
    reasoning = ``thoughtsTokenCount``. JSON uses camelCase, SDK ``model_dump()`` snake_case:
    both are read. In a stream every chunk carries ``usageMetadata``; the last one wins.

Counts that break the model's invariants (a cached part larger than the input) are clamped
to fit rather than rejected: the provider's totals are what it bills.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from quotaflow.errors import ValidationError
from quotaflow.models import PROVIDERS, Usage, normalise_provider
from quotaflow.tokens import estimate_text_tokens

__all__ = ["UsageAccumulator", "extract_usage", "find_usage", "to_plain", "usage_from_dict"]

_OPENAI_SHAPED = ("openai", "xai")


# --------------------------------------------------------------------------------------------
# Input normalisation: SDK objects and JSON text to plain dicts
# --------------------------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """A dict/list for a dict, JSON text or SDK object; other values are returned unchanged."""
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, (bytes, bytearray, memoryview)):
        obj = bytes(obj).decode("utf-8", errors="replace")
    if isinstance(obj, str):
        text = obj.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"usage is not valid JSON: {exc}", field="usage") from exc
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except TypeError:
            return dump()
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return obj


def _provider(provider: str) -> str:
    p = normalise_provider(provider) if isinstance(provider, str) else ""
    if p not in PROVIDERS:
        raise ValidationError(
            f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}",
            field="provider",
        )
    return p


def _get(d: Mapping[str, Any] | None, *keys: str) -> Any:
    """The first non-None value of ``keys`` in ``d``."""
    if not isinstance(d, Mapping):
        return None
    for k in keys:
        v = d.get(k)
        if v is not None:
            return v
    return None


def _count(d: Mapping[str, Any] | None, *keys: str) -> int | None:
    v = _get(d, *keys)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValidationError(f"token count {keys[0]} is not a number: {v!r}", field="usage")
    try:
        n = int(v)
    except ValueError as exc:
        raise ValidationError(f"token count {keys[0]} is not a number: {v!r}") from exc
    if n < 0:
        raise ValidationError(f"token count {keys[0]} is negative: {n}", field="usage")
    return n


def _sub(d: Mapping[str, Any], *keys: str) -> Mapping[str, Any] | None:
    v = _get(d, *keys)
    return v if isinstance(v, Mapping) else None


def _build(
    input_tokens: int,
    output_tokens: int,
    cached: int,
    write: int,
    reasoning: int,
    *,
    write_1h: int = 0,
    audio_in: int = 0,
    audio_out: int = 0,
    web_search: int = 0,
    service_tier: Any = None,
) -> Usage:
    cached = min(cached, input_tokens)
    write = min(write, input_tokens - cached)
    reasoning = min(reasoning, output_tokens)
    details = {
        "cache_write_1h": min(write_1h, write),
        "audio_input": min(audio_in, input_tokens - cached - write),
        "audio_output": min(audio_out, output_tokens),
        "web_search": web_search,
    }
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached,
        cache_write_tokens=write,
        reasoning_tokens=reasoning,
        details={k: v for k, v in details.items() if v > 0},
        service_tier=service_tier if isinstance(service_tier, str) and service_tier else None,
    )


def _modality_tokens(details: Any, modality: str) -> int:
    """Gemini's ``promptTokensDetails``/``candidatesTokensDetails``: tokens of one modality."""
    total = 0
    for d in details if isinstance(details, list) else ():
        if isinstance(d, Mapping) and str(d.get("modality", "")).upper() == modality:
            total += _count(d, "tokenCount", "token_count") or 0
    return total


# --------------------------------------------------------------------------------------------
# Locating the usage object inside a response, chunk or event
# --------------------------------------------------------------------------------------------

_OPENAI_KEYS = ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
_ANTHROPIC_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)
_GOOGLE_KEYS = (
    "promptTokenCount",
    "prompt_token_count",
    "candidatesTokenCount",
    "candidates_token_count",
    "totalTokenCount",
    "total_token_count",
    "thoughtsTokenCount",
    "thoughts_token_count",
)


def _is_usage(provider: str, d: Mapping[str, Any]) -> bool:
    keys = (
        _GOOGLE_KEYS
        if provider == "google"
        else _ANTHROPIC_KEYS
        if provider == "anthropic"
        else _OPENAI_KEYS
    )
    return any(d.get(k) is not None for k in keys)


def find_usage(provider: str, data: Any) -> Mapping[str, Any] | None:
    """The provider's usage object inside ``data`` (a response, chunk, event or the usage
    itself), or None when there is none."""
    provider = _provider(provider)
    data = to_plain(data)
    if not isinstance(data, Mapping):
        return None
    if _is_usage(provider, data):
        return data
    if provider == "google":
        candidates: tuple[Any, ...] = (_get(data, "usageMetadata", "usage_metadata"),)
    else:
        # usage of a response/chunk/message_delta; message_start's message.usage;
        # Responses-API events' response.usage.
        candidates = (
            data.get("usage"),
            (_sub(data, "message") or {}).get("usage"),
            (_sub(data, "response") or {}).get("usage"),
        )
    for c in candidates:
        if isinstance(c, Mapping) and _is_usage(provider, c):
            return c
    return None


# --------------------------------------------------------------------------------------------
# Per-provider normalisation of a located usage object
# --------------------------------------------------------------------------------------------


def _reasoning_outside(
    provider: str, prompt: int, completion: int, reasoning: int, total: int | None
) -> bool:
    """Whether ``reasoning`` must be added to ``completion`` (xAI) or is already in it (OpenAI)."""
    if reasoning <= 0:
        return False
    if reasoning > completion:
        return True
    if total is not None:
        if total == prompt + completion + reasoning:
            return True
        if total == prompt + completion:
            return False
    return provider == "xai"


def _openai_usage(provider: str, u: Mapping[str, Any]) -> Usage:
    if _get(u, "prompt_tokens", "completion_tokens") is not None:  # Chat Completions shape
        prompt = _count(u, "prompt_tokens") or 0
        completion = _count(u, "completion_tokens") or 0
        in_details = _sub(u, "prompt_tokens_details")
        out_details = _sub(u, "completion_tokens_details")
    else:  # Responses shape
        prompt = _count(u, "input_tokens") or 0
        completion = _count(u, "output_tokens") or 0
        in_details = _sub(u, "input_tokens_details")
        out_details = _sub(u, "output_tokens_details")
    cached = _count(in_details, "cached_tokens") or 0
    write = _count(in_details, "cache_write_tokens") or 0
    reasoning = _count(out_details, "reasoning_tokens") or 0
    total = _count(u, "total_tokens")
    output = completion
    if _reasoning_outside(provider, prompt, completion, reasoning, total):
        output = completion + reasoning
    return _build(
        prompt,
        output,
        cached,
        write,
        reasoning,
        audio_in=_count(in_details, "audio_tokens") or 0,
        audio_out=_count(out_details, "audio_tokens") or 0,
        service_tier=u.get("service_tier"),
    )


def _anthropic_usage(u: Mapping[str, Any]) -> Usage:
    uncached = _count(u, "input_tokens") or 0
    read = _count(u, "cache_read_input_tokens") or 0
    write = _count(u, "cache_creation_input_tokens")
    if write is None:
        breakdown = _sub(u, "cache_creation") or {}
        write = sum(_count(breakdown, k) or 0 for k in breakdown if k.endswith("_input_tokens"))
    output = _count(u, "output_tokens") or 0
    thinking = _count(_sub(u, "output_tokens_details"), "thinking_tokens") or 0
    return _build(
        uncached + read + write,
        output,
        read,
        write,
        thinking,
        write_1h=_count(_sub(u, "cache_creation"), "ephemeral_1h_input_tokens") or 0,
        web_search=_count(_sub(u, "server_tool_use"), "web_search_requests") or 0,
        service_tier=u.get("service_tier"),
    )


def _google_usage(u: Mapping[str, Any]) -> Usage:
    prompt = _count(u, "promptTokenCount", "prompt_token_count")
    tool = _count(u, "toolUsePromptTokenCount", "tool_use_prompt_token_count") or 0
    cached = _count(u, "cachedContentTokenCount", "cached_content_token_count") or 0
    candidates = _count(u, "candidatesTokenCount", "candidates_token_count") or 0
    thoughts = _count(u, "thoughtsTokenCount", "thoughts_token_count") or 0
    if prompt is None:
        total = _count(u, "totalTokenCount", "total_token_count") or 0
        prompt = max(0, total - candidates - thoughts - tool)
    prompt_details = _get(u, "promptTokensDetails", "prompt_tokens_details")
    cached_details = _get(u, "cacheTokensDetails", "cache_tokens_details")
    output_details = _get(u, "candidatesTokensDetails", "candidates_tokens_details")
    return _build(
        prompt + tool,
        candidates + thoughts,
        cached,
        0,
        thoughts,
        # audio prompt tokens not read from the cache
        audio_in=max(0, _modality_tokens(prompt_details, "AUDIO")
                     - _modality_tokens(cached_details, "AUDIO")),
        audio_out=_modality_tokens(output_details, "AUDIO"),
    )  # fmt: skip


def usage_from_dict(provider: str, usage: Mapping[str, Any]) -> Usage:
    """Normalise one provider usage object (already located, see :func:`find_usage`)."""
    provider = _provider(provider)
    if provider == "anthropic":
        return _anthropic_usage(usage)
    if provider == "google":
        return _google_usage(usage)
    return _openai_usage(provider, usage)


def extract_usage(provider: str, response: Any) -> Usage:
    """The normalised :class:`Usage` of a provider ``response`` (see the module docstring).

    Raises :class:`~quotaflow.errors.ValidationError` when the response carries no usage.
    """
    p = _provider(provider)
    data = to_plain(response)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        acc = UsageAccumulator(p)
        for event in data:
            acc.add(event)
        if acc.usage is None:
            raise ValidationError(
                f"no {p} usage found in {len(data)} stream events; estimate it and flag "
                "estimated=True",
                field="usage",
            )
        return acc.usage
    found = find_usage(p, data)
    if found is None:
        what = type(response).__name__
        raise ValidationError(
            f"no {p} usage found in the {what} given; the provider reported no token counts "
            "(estimate them and flag estimated=True)",
            field="usage",
        )
    usage = usage_from_dict(p, found)
    return _with_service_tier(usage, data)


def _with_service_tier(usage: Usage, data: Any) -> Usage:
    """OpenAI reports the service tier beside the usage, at the response's top level."""
    tier = data.get("service_tier") if isinstance(data, Mapping) else None
    if usage.service_tier is None and isinstance(tier, str) and 0 < len(tier) <= 40:
        return usage.model_copy(update={"service_tier": tier})
    return usage


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class UsageAccumulator:
    """Folds a provider's stream events into its final usage.

    Feed every decoded event (dict or SDK object) to :meth:`add`. :attr:`usage` is the
    provider's own final usage once its usage-bearing final event arrived (OpenAI/xAI chat: the
    chunk with ``usage``, sent when ``stream_options.include_usage`` is set; Responses API:
    ``response.completed``/``incomplete``/``failed``; Anthropic: ``message_delta`` after
    ``message_start``; Gemini: the chunk with ``finishReason``, last ``usageMetadata`` wins),
    else None. :meth:`result` always gives a Usage, estimated when the final one is missing.
    """

    def __init__(self, provider: str) -> None:
        self.provider = _provider(provider)
        self._final: Usage | None = None
        self._partial: Usage | None = None
        self._anthropic: dict[str, Any] = {}
        self._finished = False

    def add(self, event: Any) -> None:
        data = to_plain(event)
        if not isinstance(data, Mapping):
            return
        if self.provider == "anthropic":
            self._add_anthropic(data)
        elif self.provider == "google":
            self._add_google(data)
        else:
            self._add_openai(data)

    def _add_openai(self, data: Mapping[str, Any]) -> None:
        kind = data.get("type")
        if (
            isinstance(kind, str)
            and kind.startswith("response.")
            and kind not in ("response.completed", "response.incomplete", "response.failed")
        ):
            return  # response.created / in_progress carry usage: null
        choices = data.get("choices")
        if isinstance(choices, Sequence) and any(
            isinstance(c, Mapping) and c.get("finish_reason") for c in choices
        ):
            self._finished = True
        found = find_usage(self.provider, data)
        if found is None:
            return
        usage = _with_service_tier(usage_from_dict(self.provider, found), data)
        # OpenAI sends usage once, in a last chunk with no choices. Servers that put running
        # usage on every chunk only have the whole count once a finish_reason was seen.
        running = data.get("object") == "chat.completion.chunk" and bool(choices)
        if running and not self._finished:
            self._partial = usage
        else:
            self._final = usage

    def _add_anthropic(self, data: Mapping[str, Any]) -> None:
        kind = data.get("type")
        found = find_usage("anthropic", data)
        if found is None:
            return
        # message_start's usage, then message_delta's cumulative counts: later values replace.
        for k, v in found.items():
            if v is not None:
                self._anthropic[k] = v
        usage = _anthropic_usage(self._anthropic)
        if kind == "message_start":
            self._partial = usage
        else:  # message_delta, a whole Message, or a bare usage object
            self._final = usage

    def _add_google(self, data: Mapping[str, Any]) -> None:
        found = find_usage("google", data)
        candidates = data.get("candidates")
        if isinstance(candidates, Sequence):
            for c in candidates:
                if isinstance(c, Mapping) and _get(c, "finishReason", "finish_reason"):
                    self._finished = True
        if found is not None:
            self._partial = _google_usage(found)
        if self._finished and self._partial is not None:
            self._final = self._partial

    @property
    def usage(self) -> Usage | None:
        """The provider's own final usage, or None while it has not arrived."""
        return self._final

    @property
    def partial(self) -> Usage | None:
        """What the provider reported so far (input known from a start event, output so far)."""
        return self._final or self._partial

    def result(self, *, output_text: str = "", prompt_tokens_estimate: int | None = None) -> Usage:
        """The final usage, or an estimate flagged ``estimated=True`` when it is missing.

        The estimate takes the input counts reported so far (Anthropic ``message_start``,
        Gemini chunks) or else ``prompt_tokens_estimate``; output is the larger of the output
        reported so far and :func:`~quotaflow.tokens.estimate_text_tokens` of the text received.
        """
        if self._final is not None:
            return self._final
        part = self._partial
        if part is not None and part.input_tokens > 0:
            input_tokens = part.input_tokens
        else:
            input_tokens = max(0, prompt_tokens_estimate or 0)
        output = max(part.output_tokens if part else 0, estimate_text_tokens(output_text))
        cached = part.cached_input_tokens if part else 0
        write = part.cache_write_tokens if part else 0
        reasoning = part.reasoning_tokens if part else 0
        usage = _build(input_tokens, output, cached, write, reasoning)
        return usage.model_copy(update={"estimated": True})
