"""wrap_with_tracking around the official SDKs' own calls, streams included, against the
loopback fake provider and a real Postgres: what the app iterates is what the SDK gives, the
log row holds the provider's usage (or a flagged estimate when the stream was abandoned, cut
or reported none), the reservation was the call's own output cap, and no hold stays pending.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import psycopg
import pytest
from google import genai
from google.genai import types as genai_types
from quotaflow import AsyncTracker, Tracker, ValidationError
from quotaflow.testing import FakeProviderServer
from quotaflow.tokens import count_message_tokens

from tests.provider_fixtures import FULL_USAGE, GEMINI_USAGE, REPLY

ORG = "0000000a-0000-4000-8000-000000000002"
PROMPT = "Say something about foxes."
MESSAGES: Any = [{"role": "user", "content": PROMPT}]

# Costs of FULL_USAGE / GEMINI_USAGE, as in test_tracker_e2e.
COST = {
    "openai": Decimal("0.0003"),
    "anthropic": Decimal("0.0060525"),
    "google": Decimal("0.000894"),
}
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "google": "gemini-2.5-flash"}


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(usage=FULL_USAGE, reply_text=REPLY) as server:
        yield server


@pytest.fixture
def org(conn: psycopg.Connection[Any]) -> str:
    conn.execute("insert into public.organizations (id, name) values (%s, 'Wraps')", (ORG,))
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
        " values (%s, 'monthly', 'usd', 100)",
        (ORG,),
    )
    return ORG


@pytest.fixture
def tracker(db_url: str, tmp_path: Path, org: str) -> Iterator[Tracker]:
    with Tracker(database_url=db_url, outbox=tmp_path / "outbox.db") as t:
        yield t


def _rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select input_tokens, output_tokens, cost_usd, success, usage_estimated"
        " from public.api_usage_logs order by recorded_at"
    ).fetchall()


def _held(conn: psycopg.Connection[Any]) -> list[int]:
    """Output tokens each reservation held (its estimate minus the prompt's tokens)."""
    prompt = {p: count_message_tokens(p, MODEL[p], MESSAGES) for p in MODEL}
    rows = conn.execute(
        "select provider, estimated_tokens from public.quota_reservations order by created_at"
    ).fetchall()
    return [tokens - prompt[provider] for provider, tokens in rows]


def _pending(conn: psycopg.Connection[Any]) -> int:
    (n,) = conn.execute(
        "select count(*) from public.quota_reservations where status = 'pending'"
    ).fetchone()
    return int(n)


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """A dropped stream settles from a thread of its own: wait (bounded) until it has."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the dropped stream was not settled"
        time.sleep(0.02)


def _usage_of(provider: str) -> tuple[int, int]:
    u = GEMINI_USAGE if provider == "google" else FULL_USAGE
    return u.input_tokens, u.output_tokens


# ---- the SDK calls, each as (call, params, text of its events) ----------------------------


def _openai_chat(client: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    return client.chat.completions.create, {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _openai_responses(client: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    return client.responses.create, {
        "model": "gpt-4o-mini",
        "input": PROMPT,
        "max_output_tokens": 20,
        "stream": True,
    }


def _anthropic(client: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    return client.messages.create, {
        "model": "claude-sonnet-4-5",
        "messages": MESSAGES,
        "max_tokens": 20,
        "stream": True,
    }


def _google(client: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    return client.models.generate_content_stream, {
        "model": "gemini-2.5-flash",
        "contents": PROMPT,
        "config": genai_types.GenerateContentConfig(max_output_tokens=20),
    }


def _google_async(client: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    _sync_call, params = _google(client)
    return client.aio.models.generate_content_stream, params


def _text(event: Any) -> str:
    """The text delta of one SDK stream event, whichever SDK it came from."""
    if getattr(event, "type", None) == "response.output_text.delta":
        return str(event.delta)
    if getattr(event, "type", None) == "content_block_delta":
        return str(getattr(event.delta, "text", ""))
    choices = getattr(event, "choices", None)
    if choices:
        return choices[0].delta.content or ""
    if hasattr(event, "candidates"):
        return event.text or ""
    return ""


SYNC_CASES: dict[str, tuple[str, Callable[[str], Any], Callable[[Any], Any]]] = {
    "openai-chat": (
        "openai",
        lambda url: openai.OpenAI(base_url=f"{url}/v1", api_key="x"),
        _openai_chat,
    ),
    "openai-responses": (
        "openai",
        lambda url: openai.OpenAI(base_url=f"{url}/v1", api_key="x"),
        _openai_responses,
    ),
    "anthropic": (
        "anthropic",
        lambda url: anthropic.Anthropic(base_url=url, api_key="x"),
        _anthropic,
    ),
    "google": (
        "google",
        lambda url: genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=url)),
        _google,
    ),
}

ASYNC_CASES: dict[str, tuple[str, Callable[[str], Any], Callable[[Any], Any]]] = {
    "openai-chat": (
        "openai",
        lambda url: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x"),
        _openai_chat,
    ),
    "openai-responses": (
        "openai",
        lambda url: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x"),
        _openai_responses,
    ),
    "anthropic": (
        "anthropic",
        lambda url: anthropic.AsyncAnthropic(base_url=url, api_key="x"),
        _anthropic,
    ),
    "google": (
        "google",
        lambda url: genai.Client(api_key="x", http_options=genai_types.HttpOptions(base_url=url)),
        _google_async,
    ),
}


@pytest.mark.parametrize("case", list(SYNC_CASES))
def test_a_wrapped_sdk_stream_is_the_sdks_own_and_settles_with_the_providers_usage(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer, case: str
) -> None:
    provider, make_client, make_call = SYNC_CASES[case]
    client = make_client(fake.url)  # kept: a collected genai Client closes its connections
    call, params = make_call(client)
    stream = tracker.wrap_with_tracking(
        {"organization_id": ORG, "request_id": f"s-{case}"},
        call,
        provider=provider,
        params=params,
    )
    assert _pending(conn) == 1  # held while the app reads
    with stream:
        text = "".join(_text(event) for event in stream)
    assert text == REPLY
    assert _rows(conn) == [(*_usage_of(provider), COST[provider], True, False)]
    assert stream.usage_record is not None and stream.usage_record.cost == COST[provider]
    assert _held(conn) == [20]  # the call's own output cap, not the default
    assert _pending(conn) == 0


@pytest.mark.parametrize("case", list(ASYNC_CASES))
def test_async_wrapped_sdk_streams_settle_with_the_providers_usage(
    db_url: str,
    tmp_path: Path,
    org: str,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
    case: str,
) -> None:
    provider, make_client, make_call = ASYNC_CASES[case]

    async def main() -> None:
        async with AsyncTracker(database_url=db_url, outbox=tmp_path / "a.db") as tracker:
            client = make_client(fake.url)
            call, params = make_call(client)
            stream = await tracker.wrap_with_tracking(
                {"organization_id": ORG}, call, provider=provider, params=params
            )
            async with stream:
                text = "".join([_text(event) async for event in stream])
            assert text == REPLY

    asyncio.run(main())
    assert _rows(conn) == [(*_usage_of(provider), COST[provider], True, False)]
    assert _held(conn) == [20]
    assert _pending(conn) == 0


def test_anthropic_messages_stream_manager_gives_the_sdks_stream_and_settles(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    client = anthropic.Anthropic(base_url=fake.url, api_key="x")
    params = {"model": "claude-sonnet-4-5", "messages": MESSAGES, "max_tokens": 20}
    manager = tracker.wrap_with_tracking(
        {"organization_id": ORG}, client.messages.stream, provider="anthropic", params=params
    )
    with manager as stream:
        assert isinstance(stream, anthropic.lib.streaming.MessageStream)
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY and final.usage.output_tokens == 300
    assert _rows(conn) == [(*_usage_of("anthropic"), COST["anthropic"], True, False)]
    assert manager.usage_record is not None and manager.usage_record.cost == COST["anthropic"]
    assert _pending(conn) == 0


def test_async_anthropic_messages_stream_manager_settles(
    db_url: str, tmp_path: Path, org: str, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    async def main() -> str:
        async with AsyncTracker(database_url=db_url, outbox=tmp_path / "a.db") as tracker:
            client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="x")
            params = {"model": "claude-sonnet-4-5", "messages": MESSAGES, "max_tokens": 20}
            manager = await tracker.wrap_with_tracking(
                {"organization_id": ORG},
                client.messages.stream,
                provider="anthropic",
                params=params,
            )
            async with manager as stream:
                return "".join([t async for t in stream.text_stream])

    assert asyncio.run(main()) == REPLY
    assert _rows(conn) == [(*_usage_of("anthropic"), COST["anthropic"], True, False)]
    assert _pending(conn) == 0


def test_a_lambda_wrap_of_a_stream_settles_too(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    """The form of the report: a lambda around the SDK call, max_tokens named for the hold."""
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x")
    stream = tracker.wrap_with_tracking(
        {"organization_id": ORG},
        lambda: client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        ),
        provider="openai",
        model="gpt-4o-mini",
        messages=MESSAGES,
        max_tokens=20,
    )
    assert "".join(_text(c) for c in stream) == REPLY
    assert _rows(conn) == [(*_usage_of("openai"), COST["openai"], True, False)]
    assert _held(conn) == [20] and _pending(conn) == 0


def test_abandoned_and_dropped_streams_settle_with_a_flagged_estimate(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    call, params = _anthropic(anthropic.Anthropic(base_url=fake.url, api_key="x"))
    stream = tracker.wrap_with_tracking(
        {"organization_id": ORG}, call, provider="anthropic", params=params
    )
    for _event in stream:
        break  # the app stops reading; close() settles
    stream.close()
    dropped = tracker.wrap_with_tracking(
        {"organization_id": ORG}, call, provider="anthropic", params=params
    )
    next(iter(dropped))
    del dropped  # neither finished nor closed: settled when collected
    gc.collect()
    _eventually(lambda: len(_rows(conn)) == 2)
    rows = _rows(conn)
    assert len(rows) == 2
    for input_tokens, output_tokens, cost, success, estimated in rows:
        # message_start reported the input: kept; the output is estimated, within the cap.
        assert (input_tokens, success, estimated) == (_usage_of("anthropic")[0], True, True)
        assert 0 <= output_tokens <= 20 and cost > 0
    assert _pending(conn) == 0


def test_a_cut_stream_settles_as_a_flagged_failure_and_one_without_usage_as_an_estimate(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    call, params = _openai_chat(client)
    fake.cut_next_stream(after_chunks=2)  # the connection drops mid-body
    stream = tracker.wrap_with_tracking(
        {"organization_id": ORG, "request_id": "cut"}, call, provider="openai", params=params
    )
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for _event in stream:
            pass
    no_usage = {k: v for k, v in params.items() if k != "stream_options"}
    plain = tracker.wrap_with_tracking(
        {"organization_id": ORG, "request_id": "plain"}, call, provider="openai", params=no_usage
    )
    assert "".join(_text(c) for c in plain) == REPLY
    rows = dict(
        conn.execute(
            "select request_id, array[success, usage_estimated, output_tokens > 0]"
            " from public.api_usage_logs"
        ).fetchall()
    )
    assert rows["cut"] == [False, True, True]  # a failure, usage estimated from its text
    assert rows["plain"] == [True, True, True]
    assert _pending(conn) == 0


def test_a_response_without_usage_is_recorded_as_an_estimate_not_left_held(
    tracker: Tracker, conn: psycopg.Connection[Any]
) -> None:
    raw = {"choices": [{"message": {"content": REPLY}, "finish_reason": "stop"}]}
    assert (
        tracker.wrap_with_tracking(
            {"organization_id": ORG},
            lambda: raw,
            provider="openai",
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=50,
        )
        is raw
    )
    [(input_tokens, output_tokens, _cost, success, estimated)] = _rows(conn)
    assert (success, estimated) == (True, True)
    assert input_tokens == count_message_tokens("openai", "gpt-4o-mini", MESSAGES)
    assert 0 < output_tokens <= 50
    assert _pending(conn) == 0


@pytest.mark.parametrize(
    ("provider", "params", "held"),
    [
        (
            "openai",
            {"model": "gpt-4o-mini", "messages": MESSAGES, "max_completion_tokens": 30, "n": 3},
            90,
        ),
        ("openai", {"model": "gpt-4o-mini", "input": PROMPT, "max_output_tokens": 40}, 40),
        (
            "google",
            {
                "model": "gemini-2.5-flash",
                "contents": PROMPT,
                "config": {"max_output_tokens": 25, "candidate_count": 2},
            },
            50,
        ),
        ("openai", {"model": "gpt-4o-mini", "messages": MESSAGES}, 1024),
    ],
    ids=["n", "responses", "google-candidates", "no-cap-default"],
)
def test_the_reservation_reads_the_calls_own_cap_and_multipliers(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    provider: str,
    params: dict[str, Any],
    held: int,
) -> None:
    usage = {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}
    if provider == "google":
        usage = {"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5}}
    tracker.wrap_with_tracking(
        {"organization_id": ORG}, lambda **kw: usage, provider=provider, params=params
    )
    assert _held(conn) == [held]


def test_bad_params_are_refused_before_anything_is_called(tracker: Tracker) -> None:
    called = []
    with pytest.raises(ValidationError) as e:
        tracker.wrap_with_tracking(
            {"organization_id": ORG},
            lambda **kw: called.append(kw),
            provider="openai",
            params={"model": "gpt-4o-mini", "messages": MESSAGES, "n": 0, "max_tokens": 5},
        )
    assert e.value.field == "extra.n"
    with pytest.raises(ValidationError, match="no model"):
        tracker.wrap_with_tracking(
            {"organization_id": ORG}, lambda **kw: called.append(kw), provider="openai", params={}
        )
    assert called == []


def test_an_async_stream_given_to_the_blocking_tracker_is_refused_and_settled(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    async def agen() -> Any:
        yield {"x": 1}

    with pytest.raises(ValidationError, match="AsyncTracker"):
        tracker.wrap_with_tracking(
            {"organization_id": ORG},
            agen,
            provider="openai",
            model="gpt-4o-mini",
            messages=MESSAGES,
            max_tokens=20,
        )
    [(_i, _o, _c, success, estimated)] = _rows(conn)
    assert (success, estimated) == (True, True) and _pending(conn) == 0


def test_async_abandoned_and_cancelled_streams_settle_flagged(
    db_url: str, tmp_path: Path, org: str, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    async def main() -> None:
        async with AsyncTracker(database_url=db_url, outbox=tmp_path / "a.db") as tracker:
            client = openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="x")
            call, params = _openai_chat(client)
            stream = await tracker.wrap_with_tracking(
                {"organization_id": ORG}, call, provider="openai", params=params
            )
            async for _event in stream:
                break
            await stream.close()  # the name openai's AsyncStream gives it
            assert stream.usage_record is not None and stream.usage_record.usage.estimated

            fake.chunk_delay = 0.5
            slow = await tracker.wrap_with_tracking(
                {"organization_id": ORG}, call, provider="openai", params=params
            )

            async def read() -> None:
                async for _event in slow:
                    pass

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(read(), timeout=0.2)

    asyncio.run(main())
    rows = _rows(conn)
    assert len(rows) == 2 and all(success and estimated for *_, success, estimated in rows)
    assert _pending(conn) == 0


def test_openai_stream_helpers_and_an_unentered_manager(
    tracker: Tracker, conn: psycopg.Connection[Any], fake: FakeProviderServer
) -> None:
    """openai's chat.completions.stream() helper settles with the provider's usage; a manager
    never entered sent nothing, so its hold is released when it is dropped."""
    client = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x")
    params = {**_openai_chat(client)[1], "stream": None}
    del params["stream"]
    manager = tracker.wrap_with_tracking(
        {"organization_id": ORG}, client.chat.completions.stream, provider="openai", params=params
    )
    with manager as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == REPLY and final.usage is not None
    assert _rows(conn) == [(*_usage_of("openai"), COST["openai"], True, False)]

    unused = tracker.wrap_with_tracking(
        {"organization_id": ORG, "request_id": "never-entered"},
        client.chat.completions.stream,
        provider="openai",
        params=params,
    )
    assert _pending(conn) == 1
    del unused
    gc.collect()
    _eventually(lambda: _pending(conn) == 0)
    assert len(_rows(conn)) == 1
    assert conn.execute(
        "select status from public.quota_reservations where request_id = 'never-entered'"
    ).fetchone() == ("released",)
