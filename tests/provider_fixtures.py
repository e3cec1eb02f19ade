"""Fixtures and helpers for the provider-facing tests: a loopback fake provider and clients
pointed at it. Import the fixtures into a test module (``from tests.provider_fixtures import
fake, ...``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from quotaflow.models import AIModelRequest, Usage
from quotaflow.providers import AsyncProviderClient, ProviderClient, RetryPolicy
from quotaflow.testing import FakeProviderServer

# Usage with every part set, so each provider's field semantics are exercised.
FULL_USAGE = Usage(
    input_tokens=1200,
    output_tokens=300,
    cached_input_tokens=800,
    cache_write_tokens=150,
    reasoning_tokens=120,
)

# Gemini reports no cache writes (explicit caches are created by a separate call).
GEMINI_USAGE = FULL_USAGE.model_copy(update={"cache_write_tokens": 0})

REPLY = "The quick brown fox jumps over the lazy dog."

# (provider, api, model) for every adapter.
ADAPTER_CASES = [
    ("openai", "chat", "gpt-4o-mini"),
    ("openai", "responses", "gpt-4o-mini"),
    ("xai", "chat", "grok-4"),
    ("xai", "responses", "grok-4"),
    ("anthropic", "chat", "claude-sonnet-4-5"),
    ("google", "chat", "gemini-2.5-flash"),
]

ROUTE = {
    ("openai", "chat"): "chat.completions",
    ("xai", "chat"): "chat.completions",
    ("openai", "responses"): "responses",
    ("xai", "responses"): "responses",
    ("anthropic", "chat"): "messages",
}

FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_attempts=3, deadline=5.0)

API_KEYS = {"openai": "sk-test-openai", "anthropic": "sk-ant-test", "google": "g-test", "xai": "x"}


def route_of(provider: str, api: str, stream: bool) -> str:
    if provider == "google":
        return "streamGenerateContent" if stream else "generateContent"
    return ROUTE[(provider, api)]


def expected_usage(provider: str) -> Usage:
    return GEMINI_USAGE if provider == "google" else FULL_USAGE


def base_urls(server: FakeProviderServer) -> dict[str, str]:
    return {
        "openai": f"{server.url}/v1",
        "xai": f"{server.url}/v1",
        "anthropic": server.url,
        "google": server.url,
    }


def make_request(provider: str, api: str = "chat", model: str = "m", **kw: Any) -> AIModelRequest:
    return AIModelRequest(
        provider=provider,  # type: ignore[arg-type]
        api=api,  # type: ignore[arg-type]
        model=model,
        messages=[
            {"role": "system", "content": "Answer briefly."},  # type: ignore[list-item]
            {"role": "user", "content": "Say something about foxes."},  # type: ignore[list-item]
        ],
        max_tokens=kw.pop("max_tokens", 64),
        **kw,
    )


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    """A fresh fake provider reporting FULL_USAGE and replying REPLY."""
    with FakeProviderServer(usage=FULL_USAGE, reply_text=REPLY) as server:
        yield server


@pytest.fixture
def client(fake: FakeProviderServer) -> Iterator[ProviderClient]:
    with ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY) as c:
        yield c


@pytest.fixture
def aclient(fake: FakeProviderServer) -> AsyncProviderClient:
    return AsyncProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY)
