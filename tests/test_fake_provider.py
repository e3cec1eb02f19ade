"""The fake provider speaks each wire format well enough for the official SDKs, counts what
reaches it, and plays scripted failures."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from quotaflow.models import Usage
from quotaflow.testing import FakeProviderServer, Outcome

from tests.provider_fixtures import FULL_USAGE, REPLY, fake  # noqa: F401

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def test_openai_sdk_chat_completions(fake: FakeProviderServer) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1200
    assert completion.usage.completion_tokens == 300  # OpenAI: reasoning included

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert all(c.usage is None for c in plain)  # no usage chunk unless asked for
    assert fake.request_count("chat.completions") == 3


def test_openai_sdk_responses(fake: FakeProviderServer) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(model="gpt-4o-mini", input="hi")
    assert response.output_text == REPLY and response.status == "completed"
    events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert fake.request_count("responses") == 2


def test_xai_through_the_openai_sdk_reports_reasoning_beside_completion(
    fake: FakeProviderServer,  # noqa: F811
) -> None:
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    usage = client.chat.completions.create(model="grok-4", messages=MESSAGES).usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert (
        usage.completion_tokens == 180 and usage.completion_tokens_details.reasoning_tokens == 120
    )
    assert usage.total_tokens == 1500


def test_anthropic_sdk_messages(fake: FakeProviderServer) -> None:  # noqa: F811
    client = anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)
    message = client.messages.create(model="claude-x", max_tokens=64, messages=MESSAGES)
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 250  # excludes 800 cache reads and 150 writes
    assert message.usage.cache_read_input_tokens == 800
    assert message.usage.cache_creation_input_tokens == 150

    with client.messages.stream(model="claude-x", max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.usage.output_tokens == 300
    events = list(
        client.messages.create(model="claude-x", max_tokens=64, messages=MESSAGES, stream=True)
    )
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-1].type == "message_stop"


def test_google_genai_sdk(fake: FakeProviderServer) -> None:  # noqa: F811
    client = genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=fake.url))
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert response.text == REPLY
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count == 180  # excludes thoughts
    assert response.usage_metadata.thoughts_token_count == 120
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == REPLY
    assert fake.request_count("generateContent") == 1
    assert fake.request_count("streamGenerateContent") == 1
    # The SDK authenticates with the header the adapters use.
    last = fake.last_request
    assert last is not None and last.headers["x-goog-api-key"] == "x"


def test_gemini_v1beta_routes_and_json_array_stream(fake: FakeProviderServer) -> None:  # noqa: F811
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    r = httpx.post(f"{fake.url}/v1beta/models/gemini-x:streamGenerateContent", json=body)
    chunks = r.json()
    assert isinstance(chunks, list) and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    r = httpx.post(f"{fake.url}/v1beta/models/gemini-x:streamGenerateContent?alt=sse", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.text.count("data: ") == len(chunks) and "\r\n\r\n" in r.text


def test_scripted_errors_reach_the_sdks_as_their_own_exceptions(
    fake: FakeProviderServer,  # noqa: F811
) -> None:
    fake.fail_next(429, retry_after="7", message="slow down")
    with pytest.raises(openai.RateLimitError) as oe:
        openai.OpenAI(
            base_url=f"{fake.url}/v1", api_key="x", max_retries=0
        ).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert oe.value.response.headers["retry-after"] == "7"
    assert "slow down" in str(oe.value)

    fake.fail_next(529)
    with pytest.raises(anthropic.InternalServerError) as ae:
        anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0).messages.create(
            model="c", max_tokens=5, messages=MESSAGES
        )
    assert ae.value.status_code == 529

    fake.fail_next(400)
    client = genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=fake.url))
    with pytest.raises(genai_errors.ClientError) as ge:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ge.value.code == 400 and ge.value.status == "INVALID_ARGUMENT"


def test_openai_sdk_retries_a_429_and_the_server_counts_both(
    fake: FakeProviderServer,  # noqa: F811
) -> None:
    fake.fail_next(429, retry_after="0")
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=1)
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None
    assert fake.request_count() == 2 and fake.request_count("chat.completions") == 2


def test_cut_stream_breaks_the_body_for_the_sdk(fake: FakeProviderServer) -> None:  # noqa: F811
    fake.cut_next_stream(after_chunks=2, route="chat.completions")
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    received: list[str] = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["The ", "quick "]


def test_outcomes_are_consumed_in_order_and_by_route(fake: FakeProviderServer) -> None:  # noqa: F811
    fake.script(Outcome.error(500, route="messages"), Outcome.error(418))
    r = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 418  # the messages-only outcome is skipped
    r = httpx.post(f"{fake.url}/v1/messages", json={"model": "m", "messages": []})
    assert r.status_code == 500 and r.json()["type"] == "error"
    assert fake.pending_outcomes() == 0
    r = httpx.post(f"{fake.url}/v1/messages", json={"model": "m", "messages": []})
    assert r.status_code == 200
    assert fake.request_count() == 3 and fake.request_count("messages") == 2
    fake.reset()
    assert fake.request_count() == 0 and fake.requests == []


def test_unknown_routes_are_404_and_not_counted(fake: FakeProviderServer) -> None:  # noqa: F811
    assert httpx.post(f"{fake.url}/v2/other", json={}).status_code == 404
    assert httpx.get(f"{fake.url}/v1/models").status_code == 404
    assert fake.request_count() == 0


def test_usage_configuration_and_latency(fake: FakeProviderServer) -> None:  # noqa: F811
    fake.usage = Usage(input_tokens=3, output_tokens=2)
    fake.reply_text = "ok"
    fake.latency = 0.2
    started = time.monotonic()
    body = httpx.post(f"{fake.url}/v1/chat/completions", json={"model": "m", "messages": []}).json()
    assert time.monotonic() - started >= 0.2
    assert body["usage"]["prompt_tokens"] == 3 and body["choices"][0]["message"]["content"] == "ok"


def test_concurrent_requests_are_all_counted(fake: FakeProviderServer) -> None:  # noqa: F811
    fake.latency = 0.05

    def hit() -> None:
        httpx.post(f"{fake.url}/v1/messages", json={"model": "m", "messages": []})

    threads = [threading.Thread(target=hit) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.request_count("messages") == 16 == len(fake.requests)


def test_runs_standalone() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quotaflow.testing.fake_provider",
            "--port",
            "0",
            "--input-tokens",
            "9",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[-1].strip()
        body = httpx.post(f"{url}/v1/messages", json={"model": "m", "messages": []}).json()
        assert body["usage"]["input_tokens"] == 9
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_full_usage_fixture_shape() -> None:
    """The shared fixture sets every part, so each provider's semantics are exercised."""
    assert all(v > 0 for k, v in FULL_USAGE.model_dump().items() if k.endswith("_tokens"))
