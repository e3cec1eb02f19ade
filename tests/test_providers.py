"""The provider adapters against the loopback fake provider: content, usage and finish reason
exact for every adapter streaming and not; retries, errors, cut and abandoned streams."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
from quotaflow.errors import ConfigurationError, ProviderError, ValidationError
from quotaflow.models import AIModelRequest, Usage
from quotaflow.providers import (
    NO_RETRY,
    AsyncProviderClient,
    ProviderClient,
    RetryPolicy,
    RetryState,
    SSEDecoder,
    StreamState,
    call,
    get_adapter,
    iter_sse,
    parse_retry_after,
    resolve_base_url,
)
from quotaflow.testing import FakeProviderServer, split_reply

from tests.provider_fixtures import (  # noqa: F401
    ADAPTER_CASES,
    API_KEYS,
    FAST_RETRY,
    FULL_USAGE,
    REPLY,
    aclient,
    base_urls,
    client,
    expected_usage,
    fake,
    make_request,
    route_of,
)

FINISH = {
    ("openai", "chat"): "stop",
    ("xai", "chat"): "stop",
    ("openai", "responses"): "completed",
    ("xai", "responses"): "completed",
    ("anthropic", "chat"): "end_turn",
    ("google", "chat"): "STOP",
}
TRUNCATED = {
    ("openai", "chat"): "length",
    ("xai", "chat"): "length",
    ("openai", "responses"): "max_output_tokens",
    ("xai", "responses"): "max_output_tokens",
    ("anthropic", "chat"): "max_tokens",
    ("google", "chat"): "MAX_TOKENS",
}


# ---------------------------------------------------------------------------------------------
# Every adapter, non-streaming and streaming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_complete_returns_exact_content_usage_finish_reason(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    result = client.complete(make_request(provider, api, model))
    assert result.content == REPLY
    assert result.usage == expected_usage(provider)
    assert result.finish_reason == FINISH[(provider, api)]
    assert result.model == model
    assert result.provider == provider
    assert fake.request_count(route_of(provider, api, stream=False)) == 1


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_stream_yields_text_and_exact_final_usage(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    stream = client.stream(make_request(provider, api, model), prompt_tokens_estimate=5)
    chunks = list(stream)
    assert chunks == split_reply(REPLY)
    assert stream.content == REPLY
    assert stream.usage == expected_usage(provider)
    assert not stream.usage.estimated
    assert stream.finish_reason == FINISH[(provider, api)]
    assert stream.complete and stream.started
    assert stream.model == model
    assert fake.request_count(route_of(provider, api, stream=True)) == 1


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_truncated_answers_keep_the_providers_finish_reason(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    fake.truncated = True
    assert (
        client.complete(make_request(provider, api, model)).finish_reason
        == TRUNCATED[(provider, api)]
    )
    stream = client.stream(make_request(provider, api, model))
    list(stream)
    assert stream.finish_reason == TRUNCATED[(provider, api)]
    assert stream.complete


def test_requests_use_each_providers_wire_format(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    """Auth headers, paths and bodies the real APIs expect."""
    list(client.stream(make_request("openai", model="gpt-4o")))
    req = fake.last_request
    assert req is not None and req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-openai"
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.body["max_completion_tokens"] == 64

    client.complete(make_request("anthropic", model="claude"))
    req = fake.last_request
    assert req is not None and req.headers["x-api-key"] == "sk-ant-test"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.body["system"] == "Answer briefly."
    assert [m["role"] for m in req.body["messages"]] == ["user"]

    list(client.stream(make_request("google", model="gemini-2.5-flash")))
    req = fake.last_request
    assert req is not None
    assert req.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert req.headers["x-goog-api-key"] == "g-test"
    assert req.body["systemInstruction"] == {"parts": [{"text": "Answer briefly."}]}
    assert req.body["generationConfig"] == {"maxOutputTokens": 64}

    client.complete(make_request("openai", "responses", model="gpt-4o"))
    req = fake.last_request
    assert req is not None and req.body["max_output_tokens"] == 64


def test_extra_fields_pass_through_and_cannot_drop_stream_usage() -> None:
    adapter = get_adapter("openai")
    req = make_request(
        "openai", extra={"stream_options": {"include_obfuscation": False}, "top_p": 0.5}
    )
    method, path, _headers, body = adapter.build_request(req, api_key="k", stream=True)
    assert (method, path) == ("POST", "/chat/completions")
    assert body["top_p"] == 0.5
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert "k-secret-1" not in repr(adapter.build_request(req, api_key="k-secret-1"))


# ---------------------------------------------------------------------------------------------
# Retries and errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_429_with_retry_after_is_retried_and_succeeds(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    fake.fail_next(429, retry_after="0")
    result = client.complete(make_request(provider, api, model))
    assert result.content == REPLY
    assert fake.request_count() == 2


def test_500_is_retried_for_streams_before_the_first_byte(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.fail_next(500, times=2)
    stream = client.stream(make_request("anthropic", model="claude"))
    assert "".join(stream) == REPLY
    assert stream.usage == FULL_USAGE
    assert fake.request_count("messages") == 3


def test_400_is_not_retried(fake: FakeProviderServer, client: ProviderClient) -> None:  # noqa: F811
    fake.fail_next(400, message="max_tokens is too large (key sk-test-openai)")
    with pytest.raises(ProviderError) as info:
        client.complete(make_request("openai", model="gpt-4o"))
    err = info.value
    assert (err.status, err.retryable, err.provider) == (400, False, "openai")
    assert "max_tokens is too large" in str(err)
    assert "sk-test-openai" not in str(err)  # the key never appears in messages
    assert fake.request_count() == 1


def test_400_on_a_stream_raises_when_opening(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.fail_next(400, message="bad model")
    with pytest.raises(ProviderError) as info:
        client.stream(make_request("google", model="gemini"))
    assert info.value.status == 400 and "bad model" in str(info.value)


def test_exhausted_retries_raise_retryable_with_last_status(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.fail_next(503, times=5)
    with pytest.raises(ProviderError) as info:
        client.complete(make_request("xai", model="grok-4"))
    assert (info.value.status, info.value.retryable) == (503, True)
    assert "3 attempts within 5s" in str(info.value)  # states the budget
    assert fake.request_count() == FAST_RETRY.max_attempts


def test_retry_after_beyond_the_deadline_fails_at_once(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.fail_next(429, retry_after="3600")
    with pytest.raises(ProviderError) as info:
        client.complete(make_request("openai", model="gpt-4o"))
    assert info.value.retryable and info.value.retry_after == 3600
    assert fake.request_count() == 1


def test_connect_errors_are_retried_then_reported() -> None:
    with FakeProviderServer() as server:
        dead = server.url
    c = ProviderClient(api_keys=API_KEYS, base_urls={"anthropic": dead}, retry=FAST_RETRY)
    with pytest.raises(ProviderError) as info:
        c.complete(make_request("anthropic"))
    assert info.value.retryable and info.value.status is None
    assert "could not reach anthropic" in str(info.value)
    assert "gave up after 3 attempt(s)" in str(info.value)


def test_missing_api_key_is_a_configuration_error_and_nothing_is_sent(
    fake: FakeProviderServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    c = ProviderClient(base_urls=base_urls(fake))
    with pytest.raises(ConfigurationError, match="XAI_API_KEY"):
        c.complete(make_request("xai"))
    assert fake.request_count() == 0


def test_keys_and_base_urls_come_from_the_environment(
    fake: FakeProviderServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "env-key")
    monkeypatch.setenv("QUOTAFLOW_GOOGLE_BASE_URL", fake.url)
    with ProviderClient() as c:
        assert c.complete(make_request("google", model="gemini")).content == REPLY
    req = fake.last_request
    assert req is not None and req.headers["x-goog-api-key"] == "env-key"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere/v1/")
    assert resolve_base_url(get_adapter("openai")) == "http://elsewhere/v1"
    assert resolve_base_url(get_adapter("openai"), "http://arg/v1") == "http://arg/v1"


# ---------------------------------------------------------------------------------------------
# Broken and abandoned streams
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_stream_cut_midway_estimates_usage(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    fake.cut_next_stream(after_chunks=2)
    stream = client.stream(make_request(provider, api, model), prompt_tokens_estimate=77)
    received: list[str] = []
    with pytest.raises(ProviderError) as info:
        for chunk in stream:
            received.append(chunk)
    assert info.value.retryable
    assert received == split_reply(REPLY)[:2]
    usage = stream.usage
    assert usage.estimated and not stream.complete
    assert usage.output_tokens >= 2
    # Anthropic (message_start) and Gemini (every chunk) report input before the end.
    reports_input_early = provider in ("anthropic", "google")
    assert usage.input_tokens == (FULL_USAGE.input_tokens if reports_input_early else 77)


def test_stream_ending_cleanly_without_final_event_is_incomplete(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.cut_next_stream(after_chunks=1, clean=True)
    stream = client.stream(make_request("openai", model="gpt-4o"), prompt_tokens_estimate=10)
    with pytest.raises(ProviderError, match="ended before its final event"):
        list(stream)
    assert stream.usage.estimated and stream.usage.input_tokens == 10
    assert not stream.complete


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_stream_abandoned_by_the_caller_estimates_usage(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    fake.reply_text = " ".join(["word"] * 200)
    fake.chunk_delay = 0.001
    stream = client.stream(make_request(provider, api, model), prompt_tokens_estimate=33)
    for chunk in stream:
        assert chunk == "word "
        break
    stream.close()
    assert not stream.complete
    assert stream.usage.estimated
    assert stream.usage.output_tokens >= 1
    assert stream.usage.input_tokens in (33, FULL_USAGE.input_tokens)
    assert list(stream) == []  # closed: nothing more, no error
    stream.close()  # idempotent


def test_prompt_estimate_defaults_to_counting_the_messages(
    fake: FakeProviderServer,  # noqa: F811
    client: ProviderClient,  # noqa: F811
) -> None:
    fake.cut_next_stream(after_chunks=1)
    stream = client.stream(make_request("openai", model="gpt-4o"))
    with pytest.raises(ProviderError):
        list(stream)
    assert stream.usage.estimated and stream.usage.input_tokens > 10


def test_in_stream_error_event_raises_provider_error() -> None:
    state = StreamState(get_adapter("anthropic"), prompt_tokens_estimate=4)
    state.started = True
    lines = [
        "event: error",
        'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        "",
    ]
    with pytest.raises(ProviderError, match="Overloaded") as info:
        for line in lines:
            state.feed_line(line)
    assert info.value.retryable and not state.complete and state.usage.estimated


# ---------------------------------------------------------------------------------------------
# Async variants
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "api", "model"), ADAPTER_CASES)
def test_async_complete_and_stream(
    fake: FakeProviderServer,  # noqa: F811
    aclient: AsyncProviderClient,  # noqa: F811
    provider: str,
    api: str,
    model: str,
) -> None:
    async def run() -> None:
        async with aclient:
            result = await aclient.complete(make_request(provider, api, model))
            assert (result.content, result.usage) == (REPLY, expected_usage(provider))
            stream = await aclient.stream(make_request(provider, api, model))
            chunks = [c async for c in stream]
            assert "".join(chunks) == REPLY
            assert stream.usage == expected_usage(provider) and stream.complete
            assert stream.finish_reason == FINISH[(provider, api)]

    asyncio.run(run())


def test_async_retries_errors_cut_and_abandon(
    fake: FakeProviderServer,  # noqa: F811
    aclient: AsyncProviderClient,  # noqa: F811
) -> None:
    async def run() -> None:
        async with aclient:
            fake.fail_next(429, retry_after="0")
            assert (await aclient.complete(make_request("anthropic"))).content == REPLY
            assert fake.request_count("messages") == 2

            fake.fail_next(400)
            with pytest.raises(ProviderError) as info:
                await aclient.stream(make_request("openai", model="gpt-4o"))
            assert (info.value.status, info.value.retryable) == (400, False)

            fake.cut_next_stream(after_chunks=1)
            stream = aclient.stream(make_request("google", model="g"), prompt_tokens_estimate=9)
            with pytest.raises(ProviderError):
                async for _ in stream:  # sent lazily on first iteration
                    pass
            assert stream.usage.estimated and not stream.complete

            stream = await aclient.stream(
                make_request("xai", "responses", "grok-4"), prompt_tokens_estimate=9
            )
            async for _ in stream:
                break
            await stream.aclose()
            assert stream.usage.estimated and stream.usage.input_tokens == 9

            never = aclient.stream(make_request("openai"))
            await never.aclose()  # closed before sending: nothing billed, nothing sent
            assert never.usage == Usage() and not never.started

    before = fake.request_count()
    asyncio.run(run())
    assert fake.request_count() == before + 2 + 1 + 1 + 1


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def test_sse_decoder_follows_the_standard() -> None:
    lines = [
        ": comment",
        "event: a",
        "data: one",
        "data:two",
        "",
        "data: x",
        "id: 7",
        "",
        "data: unfinished",
    ]
    events = list(iter_sse(lines))
    assert [(e.event, e.data) for e in events] == [("a", "one\ntwo"), (None, "x")]
    assert events[1].id == "7"
    decoder = SSEDecoder()
    assert decoder.feed_line("data: y\r\n") is None
    event = decoder.feed_line("\r\n")
    assert event is not None and event.data == "y"


def test_retry_policy_backoff_jitter_and_deadline() -> None:
    p = RetryPolicy(
        initial_delay=1, multiplier=2, max_delay=5, jitter=0.2, max_attempts=5, deadline=20
    )
    assert [p.backoff(n, rand=0.5) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert 0.8 <= p.backoff(1) <= 1.2  # jittered at random by default
    assert p.backoff(1, rand=0.0) == pytest.approx(0.8)
    assert p.backoff(1, rand=0.9999) == pytest.approx(1.2, abs=1e-3)
    assert p.next_delay(1, elapsed=0, retry_after=None) == 1
    assert p.next_delay(1, elapsed=0, retry_after=7) == 7  # Retry-After replaces backoff
    assert p.next_delay(1, elapsed=15, retry_after=7) is None  # would end past the deadline
    assert p.next_delay(5, elapsed=0, retry_after=None) is None  # attempts used up
    assert NO_RETRY.next_delay(1, 0, None) is None


def test_parse_retry_after_seconds_http_date_and_ms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"Retry-After": "2"}) == 2
    assert parse_retry_after({"retry-after": date}, now=now) == 30
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_state_classifies_statuses() -> None:
    clock = iter([0.0, 0.0, 0.1, 0.2]).__next__
    state = RetryState(
        RetryPolicy(max_attempts=2), "openai", "sk-secret-key-123456", clock=clock, rand=lambda: 0.5
    )
    state.begin()
    assert state.on_status(529, {}, b"{}") == 0.5
    state.begin()
    final = state.on_status(529, {}, b'{"error": {"message": "busy sk-secret-key-123456"}}')
    assert isinstance(final, ProviderError) and final.status == 529 and final.retryable
    assert "sk-secret-key-123456" not in str(final)
    fatal = state.on_status(404, {}, b"not here")
    assert isinstance(fatal, ProviderError) and not fatal.retryable


def test_parse_response_without_usage_estimates_or_raises() -> None:
    adapter = get_adapter("openai")
    body = {"choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}]}
    result = adapter.parse_response(body, prompt_tokens_estimate=12)
    assert result.usage.estimated and result.usage.input_tokens == 12
    with pytest.raises(ValidationError):
        adapter.parse_response(body)


def test_unknown_provider_api_combination() -> None:
    with pytest.raises(ValidationError):
        get_adapter("anthropic", "responses")
    assert get_adapter("gemini").provider == "google"
    assert get_adapter("grok", "responses").provider == "xai"


def test_call_function_with_own_http_client(fake: FakeProviderServer) -> None:  # noqa: F811
    with httpx.Client() as http:
        result = call(
            http,
            AIModelRequest.model_validate(
                {
                    "provider": "openai",
                    "model": "gpt-4o",
                    "messages": [{"role": "user", "content": "hi"}],
                }
            ),
            base_url=f"{fake.url}/v1",
            api_key="k",
        )
    assert result.usage == FULL_USAGE
