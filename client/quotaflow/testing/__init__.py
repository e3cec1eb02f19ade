"""Test helpers quotaflow ships for apps' own tests.

:class:`FakeProviderServer` is a loopback HTTP server speaking the wire formats of OpenAI,
Anthropic, Gemini and xAI, so an app's tests can point quotaflow — or the official SDKs — at
it and script outcomes (usage, failures, 429s with ``Retry-After``, cut streams)::

    from quotaflow.testing import FakeProviderServer
    from quotaflow.models import Usage

    with FakeProviderServer(usage=Usage(input_tokens=30, output_tokens=7)) as fake:
        tracker = Tracker(database_url=url, providers=ProviderClient(
            api_keys={"openai": "test"}, base_urls={"openai": fake.url + "/v1"}))
        fake.fail_next(429, retry_after="0")

Standalone: ``python -m quotaflow.testing.fake_provider --port 8787``.
"""

from __future__ import annotations

from .fake_provider import (
    DEFAULT_REPLY,
    FakeProviderServer,
    Outcome,
    RecordedRequest,
    anthropic_usage,
    gemini_usage,
    openai_usage,
    responses_usage,
    split_reply,
)

__all__ = [
    "DEFAULT_REPLY",
    "FakeProviderServer",
    "Outcome",
    "RecordedRequest",
    "anthropic_usage",
    "gemini_usage",
    "openai_usage",
    "responses_usage",
    "split_reply",
]
