"""extract_usage normalises every provider's usage exactly: raw dicts, JSON text, and the official
SDKs' objects obtained from those SDKs talking to the loopback fake provider."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types
from quotaflow.errors import ValidationError
from quotaflow.models import Usage
from quotaflow.testing import FakeProviderServer
from quotaflow.usage import UsageAccumulator, extract_usage, find_usage

from tests.provider_fixtures import FULL_USAGE, GEMINI_USAGE, fake  # noqa: F401

MESSAGES: Any = [{"role": "user", "content": "hi"}]


def tokens(u: Usage) -> Usage:
    """The counts alone: the fake provider also reports a service tier, as the real APIs do."""
    return u.model_copy(update={"service_tier": None})


def U(i: int, o: int, c: int = 0, w: int = 0, r: int = 0, est: bool = False) -> Usage:
    return Usage(
        input_tokens=i,
        output_tokens=o,
        cached_input_tokens=c,
        cache_write_tokens=w,
        reasoning_tokens=r,
        estimated=est,
    )


# ---------------------------------------------------------------------------------------------
# Raw dicts and JSON text, per provider rule
# ---------------------------------------------------------------------------------------------

OPENAI_CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {
        "prompt_tokens": 1486,
        "completion_tokens": 651,
        "total_tokens": 2137,
        "prompt_tokens_details": {"cached_tokens": 1408, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 512, "audio_tokens": 0},
    },
}
OPENAI_RESPONSES = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "usage": {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100},
        "output_tokens": 250,
        "output_tokens_details": {"reasoning_tokens": 200},
        "total_tokens": 1150,
    },
}
# Google Cloud's "Reasoning for Grok models" example: 663 + 50 + 124 = 837.
XAI_CHAT = {
    "object": "chat.completion",
    "usage": {
        "completion_tokens": 50,
        "completion_tokens_details": {"reasoning_tokens": 124, "audio_tokens": 0},
        "prompt_tokens": 663,
        "prompt_tokens_details": {"cached_tokens": 654, "text_tokens": 663},
        "total_tokens": 837,
    },
}
ANTHROPIC_MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 248,
        "cache_read_input_tokens": 1800,
        "output_tokens": 503,
        "output_tokens_details": {"thinking_tokens": 400},
    },
}
GEMINI_RESPONSE = {
    "candidates": [
        {"content": {"parts": [{"text": "hi"}], "role": "model"}, "finishReason": "STOP"}
    ],
    "usageMetadata": {
        "promptTokenCount": 1000,
        "cachedContentTokenCount": 700,
        "candidatesTokenCount": 80,
        "thoughtsTokenCount": 220,
        "toolUsePromptTokenCount": 30,
        "totalTokenCount": 1330,
    },
    "modelVersion": "gemini-2.5-flash",
}

RAW_CASES = [
    ("openai", OPENAI_CHAT, U(1486, 651, c=1408, r=512)),
    ("openai", OPENAI_RESPONSES, U(900, 250, c=600, w=100, r=200)),
    ("xai", XAI_CHAT, U(663, 174, c=654, r=124)),
    ("anthropic", ANTHROPIC_MESSAGE, U(2098, 503, c=1800, w=248, r=400)),
    ("google", GEMINI_RESPONSE, U(1030, 300, c=700, r=220)),
]


@pytest.mark.parametrize(("provider", "body", "expected"), RAW_CASES)
def test_raw_dict_whole_response_and_usage_part(
    provider: str, body: dict[str, Any], expected: Usage
) -> None:
    """The whole response and only its usage part normalise to the same Usage."""
    assert extract_usage(provider, body) == expected
    part = body.get("usage") or body.get("usageMetadata")
    assert extract_usage(provider, part) == expected


@pytest.mark.parametrize(("provider", "body", "expected"), RAW_CASES)
def test_json_text_str_and_bytes(provider: str, body: dict[str, Any], expected: Usage) -> None:
    text = json.dumps(body)
    assert extract_usage(provider, text) == expected
    assert extract_usage(provider, text.encode()) == expected


def test_gemini_snake_case_as_sdk_model_dump_writes_it() -> None:
    usage = {
        "prompt_token_count": 1000,
        "cached_content_token_count": 700,
        "candidates_token_count": 80,
        "thoughts_token_count": 220,
        "tool_use_prompt_token_count": 30,
        "total_token_count": 1330,
    }
    assert extract_usage("google", {"usage_metadata": usage}) == U(1030, 300, c=700, r=220)
    assert extract_usage("gemini", usage) == U(1030, 300, c=700, r=220)  # alias accepted


def test_gemini_without_candidates_count_and_prompt_from_total() -> None:
    """Gemini omits zero counts; a missing prompt count is total minus the other parts."""
    assert extract_usage("google", {"promptTokenCount": 12, "totalTokenCount": 12}) == U(12, 0)
    assert extract_usage("google", {"candidatesTokenCount": 5, "totalTokenCount": 17}) == U(12, 5)


def test_anthropic_cache_creation_breakdown_only() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 20},
        "output_tokens": 5,
    }
    # The 1-hour writes are kept apart: Anthropic bills them at 2x input, 5-minute at 1.25x.
    assert extract_usage("anthropic", usage) == U(130, 5, w=120).model_copy(
        update={"details": {"cache_write_1h": 20}}
    )


@pytest.mark.parametrize(
    ("provider", "usage", "expected"),
    [
        # OpenAI: reasoning already inside completion_tokens (total = prompt + completion).
        (
            "openai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 50,
                "total_tokens": 60,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 50, r=40),
        ),
        # A gateway that reshaped xAI to OpenAI's convention: total says reasoning is inside.
        (
            "xai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 50,
                "total_tokens": 60,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 50, r=40),
        ),
        # xAI without total_tokens: reasoning is beside completion_tokens (xAI's convention).
        (
            "xai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 50,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 90, r=40),
        ),
        # OpenAI without total: inside, unless reasoning cannot fit in completion.
        (
            "openai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 50,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 50, r=40),
        ),
        (
            "openai",
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "completion_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 45, r=40),
        ),
        # xAI Responses shape with reasoning beside output_tokens, detected from the total.
        (
            "xai",
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "total_tokens": 55,
                "output_tokens_details": {"reasoning_tokens": 40},
            },
            U(10, 45, r=40),
        ),
    ],
)
def test_reasoning_inside_or_beside_completion(
    provider: str, usage: dict[str, Any], expected: Usage
) -> None:
    assert extract_usage(provider, usage) == expected


@pytest.mark.parametrize(
    ("provider", "response"),
    [
        ("openai", {"id": "chatcmpl-1", "choices": []}),
        ("openai", {"object": "chat.completion.chunk", "choices": [], "usage": None}),
        ("openai", {"type": "response.created", "response": {"usage": None}}),
        ("anthropic", {"type": "content_block_delta", "delta": {"text": "x"}}),
        ("google", {"candidates": [{"content": {"parts": [{"text": "x"}]}}]}),
        ("xai", "{}"),
        ("openai", b""),
        ("anthropic", [{"type": "ping"}]),
    ],
)
def test_missing_usage_raises_instead_of_zero(provider: str, response: Any) -> None:
    with pytest.raises(ValidationError, match=r"no .* usage found"):
        extract_usage(provider, response)


@pytest.mark.parametrize(
    ("provider", "response", "message"),
    [
        ("openai", "not json", "not valid JSON"),
        ("nobody", {}, "unknown provider"),
        ("openai", {"prompt_tokens": -1, "completion_tokens": 1}, "negative"),
        ("anthropic", {"input_tokens": "many", "output_tokens": 1}, "not a number"),
    ],
)
def test_invalid_input_raises_validation_error(provider: str, response: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        extract_usage(provider, response)


def test_inconsistent_parts_are_clamped_to_the_totals() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 25},
    }
    assert extract_usage("openai", usage) == U(10, 3, c=10)


# ---------------------------------------------------------------------------------------------
# Streams: UsageAccumulator and lists of events
# ---------------------------------------------------------------------------------------------


def test_accumulator_anthropic_start_then_cumulative_deltas() -> None:
    acc = UsageAccumulator("anthropic")
    acc.add(
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 20,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 5,
                    "output_tokens": 1,
                }
            },
        }
    )
    assert acc.usage is None
    assert acc.partial == U(125, 1, c=100, w=5)
    acc.add(
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 7}}
    )
    acc.add(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 15},
        }
    )
    assert acc.usage == U(125, 15, c=100, w=5)


def test_accumulator_gemini_last_usage_wins_once_finished() -> None:
    acc = UsageAccumulator("google")
    acc.add(
        {
            "candidates": [{"content": {"parts": [{"text": "a"}]}}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1},
        }
    )
    assert acc.usage is None and acc.partial == U(9, 1)
    acc.add(
        {
            "candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}],
            "usageMetadata": {
                "promptTokenCount": 9,
                "candidatesTokenCount": 4,
                "thoughtsTokenCount": 3,
            },
        }
    )
    assert acc.usage == U(9, 7, r=3)


def test_accumulator_openai_responses_ignores_created_event() -> None:
    acc = UsageAccumulator("openai")
    acc.add({"type": "response.created", "response": {"usage": None}})
    acc.add({"type": "response.output_text.delta", "delta": "x"})
    assert acc.usage is None
    acc.add({"type": "response.completed", "response": OPENAI_RESPONSES})
    assert acc.usage == U(900, 250, c=600, w=100, r=200)


def test_accumulator_result_estimates_when_final_usage_missing() -> None:
    acc = UsageAccumulator("openai")
    acc.add({"choices": [{"delta": {"content": "Hello"}}], "usage": None})
    result = acc.result(output_text="Hello there", prompt_tokens_estimate=42)
    assert result.estimated and result.input_tokens == 42 and result.output_tokens >= 2
    anth = UsageAccumulator("anthropic")
    anth.add(
        {"type": "message_start", "message": {"usage": {"input_tokens": 30, "output_tokens": 1}}}
    )
    est = anth.result(output_text="Hello there", prompt_tokens_estimate=999)
    assert est.estimated and est.input_tokens == 30  # input the provider reported wins


def test_extract_usage_from_a_list_of_stream_events() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "message_delta", "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    assert extract_usage("anthropic", events) == U(3, 9)
    assert extract_usage("anthropic", json.dumps(events)) == U(3, 9)


# ---------------------------------------------------------------------------------------------
# Official SDK objects, produced by the SDKs against the fake provider
# ---------------------------------------------------------------------------------------------


def test_openai_sdk_objects(fake: FakeProviderServer) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert tokens(extract_usage("openai", completion)) == FULL_USAGE
    assert completion.usage is not None
    assert tokens(extract_usage("openai", completion.usage)) == FULL_USAGE  # CompletionUsage

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert tokens(extract_usage("openai", chunks[-1])) == FULL_USAGE  # the usage chunk
    assert tokens(extract_usage("openai", chunks)) == FULL_USAGE
    with pytest.raises(ValidationError):
        extract_usage("openai", chunks[1])  # a content chunk carries usage: null

    response = client.responses.create(model="gpt-4o", input="hi")
    assert tokens(extract_usage("openai", response)) == FULL_USAGE
    assert response.usage is not None
    assert tokens(extract_usage("openai", response.usage)) == FULL_USAGE  # ResponseUsage

    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert tokens(extract_usage("openai", events[-1])) == FULL_USAGE
    assert tokens(extract_usage("openai", events)) == FULL_USAGE


def test_xai_through_the_openai_sdk(fake: FakeProviderServer) -> None:  # noqa: F811
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model="grok-4", messages=MESSAGES)
    assert completion.usage is not None
    # xAI's wire: completion_tokens excludes reasoning.
    assert completion.usage.completion_tokens == FULL_USAGE.output_tokens - 120
    assert tokens(extract_usage("xai", completion)) == FULL_USAGE
    chunks = list(
        client.chat.completions.create(
            model="grok-4", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert tokens(extract_usage("xai", chunks)) == FULL_USAGE


def test_anthropic_sdk_objects(fake: FakeProviderServer) -> None:  # noqa: F811
    client = anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)
    message = client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES)
    assert message.usage.input_tokens == 1200 - 800 - 150  # excludes cache reads and writes
    assert tokens(extract_usage("anthropic", message)) == FULL_USAGE
    assert tokens(extract_usage("anthropic", message.usage)) == FULL_USAGE

    events = list(
        client.messages.create(model="claude-x", max_tokens=100, messages=MESSAGES, stream=True)
    )
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    assert extract_usage("anthropic", start) == U(1200, 1, c=800, w=150)
    assert extract_usage("anthropic", delta) == U(0, 300, r=120)  # a delta alone: output only
    assert tokens(extract_usage("anthropic", events)) == FULL_USAGE
    acc = UsageAccumulator("anthropic")
    for e in events:
        acc.add(e)
    assert acc.usage == FULL_USAGE


def test_google_genai_sdk_objects(fake: FakeProviderServer) -> None:  # noqa: F811
    client = genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=fake.url))
    response = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert extract_usage("google", response) == GEMINI_USAGE
    assert response.usage_metadata is not None
    assert extract_usage("google", response.usage_metadata) == GEMINI_USAGE
    assert find_usage("google", response) is not None

    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert len(chunks) > 1
    assert extract_usage("google", chunks[-1]) == GEMINI_USAGE
    assert extract_usage("google", chunks) == GEMINI_USAGE


def test_accumulator_running_usage_on_every_chunk_is_partial_until_finished() -> None:
    """OpenAI-compatible servers that repeat usage on each chunk: only the finished one counts."""
    acc = UsageAccumulator("xai")
    acc.add(
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {"content": "a"}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41},
        }
    )
    assert acc.usage is None and acc.partial == U(40, 1)
    assert acc.result(output_text="a b c d", prompt_tokens_estimate=5).input_tokens == 40
    acc.add(
        {
            "object": "chat.completion.chunk",
            "choices": [{"delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49},
        }
    )
    assert acc.usage == U(40, 9)
