"""End to end: Tracker/AsyncTracker on a real Postgres and the loopback fake provider.

Costs are checked against hand calculations from the catalogue's list prices (USD per
million tokens), with FULL_USAGE = 1200 input (800 cached, 150 cache writes), 300 output.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import quotaflow
from quotaflow import (
    AsyncTracker,
    ProviderError,
    QuotaExceededError,
    Tracker,
    Usage,
    UsageRecord,
)
from quotaflow.providers import AsyncProviderClient, ProviderClient
from quotaflow.testing import FakeProviderServer
from quotaflow.tokens import count_message_tokens

from tests.provider_fixtures import (
    API_KEYS,
    FAST_RETRY,
    FULL_USAGE,
    GEMINI_USAGE,
    REPLY,
    base_urls,
)

ORG = "0000000a-0000-4000-8000-000000000001"

# (provider, api, model, hand-calculated cost of FULL_USAGE / GEMINI_USAGE)
#   gpt-4o-mini  0.15 / 0.075 cached / 0.60 out: 250*.15 + 800*.075 + 150*.15 + 300*.6 = 300
#   grok-4       3 / 0.75 cached / 15 out:       250*3 + 800*.75 + 150*3 + 300*15      = 6300
#   sonnet-4-5   3 / 0.30 read / 3.75 write / 15: 250*3 + 800*.3 + 150*3.75 + 300*15   = 6052.5
#   gemini-2.5-flash 0.30 / 0.03 cached / 2.50:  400*.3 + 800*.03 + 300*2.5            = 894
CASES = [
    ("openai", "chat", "gpt-4o-mini", Decimal("0.0003")),
    ("openai", "responses", "gpt-4o-mini", Decimal("0.0003")),
    ("xai", "chat", "grok-4", Decimal("0.0063")),
    ("anthropic", "chat", "claude-sonnet-4-5", Decimal("0.0060525")),
    ("google", "chat", "gemini-2.5-flash", Decimal("0.000894")),
]


def _messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "Say something about foxes."}]


@pytest.fixture
def fake() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(usage=FULL_USAGE, reply_text=REPLY) as server:
        yield server


@pytest.fixture
def org(conn: psycopg.Connection[Any]) -> str:
    conn.execute(
        "insert into public.organizations (id, name, credits_per_usd) values (%s, 'E2E', 1000)",
        (ORG,),
    )
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
        " values (%s, 'monthly', 'usd', 100), (%s, 'daily', 'requests', 1000)",
        (ORG, ORG),
    )
    return ORG


@pytest.fixture
def tracker(db_url: str, fake: FakeProviderServer, tmp_path: Path, org: str) -> Iterator[Tracker]:
    providers = ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY)
    with Tracker(database_url=db_url, providers=providers, outbox=tmp_path / "outbox.db") as t:
        yield t
    providers.close()


def _log_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select request_id, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,"
        " reasoning_tokens, cost_usd, success, usage_estimated from public.api_usage_logs"
        " order by recorded_at"
    ).fetchall()


def _quota_totals(conn: psycopg.Connection[Any]) -> dict[str, tuple[Decimal, Decimal]]:
    rows = conn.execute(
        "select metric, current_usage, reserved from public.usage_quotas"
    ).fetchall()
    return {m: (u, r) for m, u, r in rows}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("provider", "api", "model", "cost"), CASES)
def test_execute_logs_exact_tokens_and_cost(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    provider: str,
    api: str,
    model: str,
    cost: Decimal,
    stream: bool,
) -> None:
    """Every provider, JSON and streaming: the log row and the response carry the provider's
    tokens and the hand-calculated cost; the quota is charged exactly that, nothing held."""
    request = {
        "provider": provider,
        "api": api,
        "model": model,
        "messages": _messages(),
        "max_tokens": 400,
        "stream": stream,
    }
    result = tracker.execute_with_tracking(request, {"organization_id": ORG, "user_id": "u1"})
    if stream:
        chunks = list(result)
        assert "".join(chunks) == REPLY
        result = result.response
    expected = GEMINI_USAGE if provider == "google" else FULL_USAGE
    assert result.content == REPLY
    assert result.usage.model_copy(update={"service_tier": None}) == expected
    assert result.cost == cost
    assert result.credits == cost * 1000
    [row] = _log_rows(conn)
    assert row[1:] == (
        expected.input_tokens,
        expected.output_tokens,
        expected.cached_input_tokens,
        expected.cache_write_tokens,
        expected.reasoning_tokens,
        cost,
        True,
        False,
    )
    totals = _quota_totals(conn)
    assert totals["usd"] == (cost, 0)
    assert totals["requests"] == (1, 0)


def test_refused_call_never_reaches_the_provider(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """A hard quota that cannot fit the estimate raises QuotaExceededError before any
    request is sent, naming the quota, its limit, usage and reset time."""
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit, current_usage)"
        " values (%s, 'daily', 1.00, 0.99)",
        (ORG,),
    )
    request = {"provider": "openai", "model": "gpt-4", "messages": _messages(), "max_tokens": 1000}
    with pytest.raises(QuotaExceededError) as info:
        tracker.execute_with_tracking(request, {"organization_id": ORG})
    err = info.value
    assert "Quota exceeded" in str(err)
    assert (err.quota_type, err.quota_limit, err.current_usage) == (
        "daily",
        Decimal("1.00"),
        Decimal("0.99"),
    )
    assert err.remaining == Decimal("0.01") and err.reset_at is not None
    assert fake.request_count() == 0
    assert _log_rows(conn) == []
    assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (0,)


def test_provider_error_leaves_a_failure_row_and_no_hold(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """A provider 400 raises ProviderError, writes one failure row and frees the hold."""
    fake.fail_next(400, message="bad request from test")
    request = {"provider": "anthropic", "model": "claude-sonnet-4-5", "messages": _messages()}
    with pytest.raises(ProviderError) as info:
        tracker.execute_with_tracking(request, {"organization_id": ORG, "request_id": "f-1"})
    assert info.value.status == 400 and not info.value.retryable
    row = conn.execute(
        "select success, error_code, cost_usd, input_tokens from public.api_usage_logs"
        " where request_id = 'f-1'"
    ).fetchone()
    assert row == (False, "http_400", Decimal(0), 0)
    assert conn.execute(
        "select status from public.quota_reservations where request_id = 'f-1'"
    ).fetchone() == ("settled",)
    assert _quota_totals(conn)["usd"] == (0, 0)


def test_same_request_id_twice_is_called_and_charged_once(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """A retried request_id returns the recorded result flagged duplicate: no second
    provider call, one log row, the quota charged once."""
    request = {"provider": "openai", "model": "gpt-4o-mini", "messages": _messages()}
    ctx = {"organization_id": ORG, "request_id": "same-1"}
    first = tracker.execute_with_tracking(request, ctx)
    second = tracker.execute_with_tracking(request, ctx)
    assert not first.duplicate and second.duplicate
    assert second.log_id == first.log_id and second.cost == first.cost == Decimal("0.0003")
    assert fake.request_count() == 1
    assert len(_log_rows(conn)) == 1
    assert _quota_totals(conn)["usd"] == (Decimal("0.0003"), 0)


def test_abandoned_stream_settles_with_estimated_usage(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """Breaking out of a stream after one chunk still settles: a success row flagged as
    estimated, with the prompt's tokens and the output received."""
    fake.chunk_delay = 0.01
    request = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": _messages(),
        "stream": True,
    }
    stream = tracker.execute_with_tracking(request, {"organization_id": ORG, "request_id": "ab"})
    for _ in stream:
        break
    stream.close()
    assert stream.response is not None and stream.response.usage.estimated
    [row] = _log_rows(conn)
    assert row[7:] == (True, True)
    assert row[1] > 0 and row[6] > 0
    assert _quota_totals(conn)["usd"][1] == 0


def test_cut_stream_raises_and_records_a_failure_with_its_usage(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """A stream the provider cuts mid-way raises ProviderError to the caller and settles a
    failure row with the usage received so far (estimated)."""
    fake.cut_next_stream(after_chunks=2)
    request = {
        "provider": "anthropic",
        "model": "claude-sonnet-4-5",
        "messages": _messages(),
        "stream": True,
    }
    stream = tracker.execute_with_tracking(request, {"organization_id": ORG, "request_id": "cut"})
    with pytest.raises(ProviderError):
        for _ in stream:
            pass
    [row] = _log_rows(conn)
    assert row[7:] == (False, True)
    assert row[1] == FULL_USAGE.input_tokens  # Anthropic's message_start reported the input
    assert _quota_totals(conn)["usd"] == (row[6], 0)


def test_broken_on_usage_callback_does_not_break_the_call(
    tracker: Tracker, conn: psycopg.Connection[Any]
) -> None:
    """A callback that raises is logged; the call returns and later callbacks still run."""
    seen: list[UsageRecord] = []

    def broken(record: UsageRecord) -> None:
        raise RuntimeError("callback bug")

    tracker.on_usage(broken)
    tracker.on_usage(seen.append)
    result = tracker.execute_with_tracking(
        {"provider": "xai", "model": "grok-4", "messages": _messages()},
        {"organization_id": ORG, "user_id": "u9"},
    )
    assert result.cost == Decimal("0.0063")
    [record] = seen
    assert (record.user_id, record.cost, record.credits) == (
        "u9",
        Decimal("0.0063"),
        Decimal("6.3"),
    )


def test_failure_also_reaches_on_usage(tracker: Tracker, fake: FakeProviderServer) -> None:
    """on_usage sees failed calls too (success False, the provider's error)."""
    seen: list[UsageRecord] = []
    tracker.on_usage(seen.append)
    fake.fail_next(403)
    with pytest.raises(ProviderError):
        tracker.execute_with_tracking(
            {"provider": "google", "model": "gemini-2.5-flash", "messages": _messages()},
            {"organization_id": ORG},
        )
    assert [(r.success, r.cost) for r in seen] == [(False, Decimal(0))]


def test_async_tracker_shares_the_flow(
    db_url: str,
    fake: FakeProviderServer,
    tmp_path: Path,
    org: str,
    conn: psycopg.Connection[Any],
) -> None:
    """AsyncTracker runs the same flow: JSON and streaming calls logged and priced exactly,
    a refused call raises before the provider is reached."""

    async def main() -> None:
        providers = AsyncProviderClient(
            api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY
        )
        tracker = AsyncTracker(database_url=db_url, providers=providers, outbox=tmp_path / "o.db")
        ctx = {"organization_id": ORG}
        req = {"provider": "anthropic", "model": "claude-sonnet-4-5", "messages": _messages()}
        result = await tracker.execute_with_tracking(req, ctx)
        assert result.cost == Decimal("0.0060525")
        stream = await tracker.execute_with_tracking({**req, "stream": True}, ctx)
        assert "".join([c async for c in stream]) == REPLY
        assert stream.response is not None and stream.response.cost == Decimal("0.0060525")
        conn.execute("update public.usage_quotas set quota_limit = 0 where metric = 'usd'")
        before = fake.request_count()
        with pytest.raises(QuotaExceededError):
            await tracker.execute_with_tracking(req, ctx)
        assert fake.request_count() == before
        await providers.aclose()
        await tracker.aclose()

    asyncio.run(main())
    assert [r[6] for r in _log_rows(conn)] == [Decimal("0.0060525")] * 2


# Registration, not I/O: the same plain methods on both trackers.
_PLAIN_ON_BOTH = {"on_usage", "on_alert", "stop_alerts"}
_RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def test_async_tracker_has_every_tracker_method_awaited() -> None:
    """Generated from one source, AsyncTracker has each public Tracker method with the same
    parameters, as a coroutine function (registration methods stay plain on both)."""
    import inspect

    names = [n for n in dir(Tracker) if not n.startswith("_") or n in _RENAMED]
    names = [n for n in names if callable(getattr(Tracker, n))]
    assert {"estimate_cost", "get_records", "export", "get_aggregated", "flush"} <= set(names)
    for name in names:
        sync_fn = getattr(Tracker, name)
        async_fn = getattr(AsyncTracker, _RENAMED.get(name, name))
        assert list(inspect.signature(sync_fn).parameters) == list(
            inspect.signature(async_fn).parameters
        ), name
        assert not inspect.iscoroutinefunction(sync_fn), name
        if name not in _PLAIN_ON_BOTH:
            assert inspect.iscoroutinefunction(async_fn), name


def test_both_trackers_close_the_provider_client_they_created(
    db_url: str,
    fake: FakeProviderServer,
    tmp_path: Path,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`with Tracker()` / `async with AsyncTracker()` configured from the environment: a call,
    the awaited analytics and estimate, then leaving the block closes the provider client."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"{fake.url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", API_KEYS["openai"])
    req = {"provider": "openai", "model": "gpt-4o-mini", "messages": _messages()}
    ctx = {"organization_id": ORG}

    with Tracker(database_url=db_url, outbox=tmp_path / "s.db") as tracker:
        assert tracker.execute_with_tracking(req, ctx).cost == Decimal("0.0003")
        created = tracker._providers
        assert created is not None and created._http is not None
    assert created._http is None and tracker._providers is None

    async def main() -> None:
        async with AsyncTracker(database_url=db_url, outbox=tmp_path / "a.db") as tracker:
            assert (await tracker.execute_with_tracking(req, ctx)).cost == Decimal("0.0003")
            records = await tracker.get_records({"organization_id": ORG})
            assert [r.cost for r in records] == [Decimal("0.0003")] * 2
            assert await tracker.count_records({"organization_id": ORG}) == 2
            csv_text = await tracker.export("csv", {"organization_id": ORG})
            assert len(csv_text.strip().splitlines()) == 3  # the header and two calls
            estimate = await tracker.estimate_cost("openai", "gpt-4o-mini", _messages(), 1000)
            assert estimate > Decimal("0.0006")  # 1000 output tokens at $0.60/M, plus input
            assert await tracker.flush(1.0)
            created = tracker._providers
            assert created is not None and created._http is not None
        assert created._http is None and tracker._providers is None

    asyncio.run(main())


def test_wrap_with_tracking_prices_the_apps_own_call(
    tracker: Tracker, conn: psycopg.Connection[Any]
) -> None:
    """wrap_with_tracking reserves, runs the app's call, extracts its usage and settles."""
    raw = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 400},
        },
    }
    assert (
        tracker.wrap_with_tracking(
            {"organization_id": ORG}, lambda: raw, provider="openai", model="gpt-4o"
        )
        is raw
    )
    # 600*2.5 + 400*1.25 + 100*10 = 3000 per million
    assert _log_rows(conn)[0][6] == Decimal("0.003")


@pytest.mark.parametrize(
    ("provider", "api", "model", "extra", "bound"),
    [
        ("openai", "chat", "gpt-4o-mini", {"n": 3}, 300),
        ("xai", "chat", "grok-4", {"n": 2}, 200),
        ("openai", "responses", "gpt-4o-mini", {"reasoning": {"effort": "high"}}, 100),
        (
            "anthropic",
            "chat",
            "claude-sonnet-4-5",
            {"thinking": {"type": "enabled", "budget_tokens": 64}},
            100,
        ),
        ("google", "chat", "gemini-2.5-flash", {"generationConfig": {"candidateCount": 4}}, 400),
        (
            "google",
            "chat",
            "gemini-2.5-flash",
            {
                "generationConfig": {
                    "maxOutputTokens": 9000,
                    "thinkingConfig": {"thinkingBudget": 512},
                }
            },
            100,
        ),
    ],
    ids=["n", "xai-n", "reasoning", "thinking", "candidates", "gemini-thinking"],
)
def test_every_field_that_multiplies_or_extends_output_is_priced_into_the_reservation(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    provider: str,
    api: str,
    model: str,
    extra: dict[str, Any],
    bound: int,
) -> None:
    """The reservation holds the output the provider may bill for the body it receives
    (max_tokens 100 in the request, ``extra`` merged last): the cap, which includes reasoning
    and thinking tokens, times the choices."""
    request = {"provider": provider, "api": api, "model": model, "messages": _messages()}
    tracker.execute_with_tracking(
        {**request, "max_tokens": 100, "extra": extra}, {"organization_id": ORG}
    )
    (held,) = conn.execute("select estimated_tokens from public.quota_reservations").fetchone()
    assert held - count_message_tokens(provider, model, _messages()) == bound


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"n": 0}, "extra.n"),
        ({"n": "3"}, "extra.n"),
        ({"n": 2.5}, "extra.n"),
        ({"best_of": 4}, "extra.best_of"),
        ({"max_completion_tokens": 5000}, "request.extra"),
        ({"max_output_tokens": 5000}, "request.extra"),
    ],
    ids=["n0", "n-string", "n-float", "best_of", "max_completion_tokens", "max_output_tokens"],
)
def test_an_output_field_that_cannot_be_bounded_is_refused_before_anything_is_held(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
    extra: dict[str, Any],
    field: str,
) -> None:
    """A choice count that is not a positive integer, best_of, or a cap set through ``extra``
    (the request's max_tokens is the one cap): ValidationError naming the field."""
    from quotaflow import ValidationError

    request = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": _messages(),
        "extra": extra,
    }
    with pytest.raises(ValidationError) as exc:
        tracker.execute_with_tracking(request, {"organization_id": ORG})
    assert exc.value.field == field
    assert fake.request_count() == 0
    assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (0,)


def test_concurrent_calls_never_overspend(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """16 threads race for a quota that fits exactly 3 reservations: 3 calls succeed, the
    rest are refused without reaching the provider."""
    conn.execute("update public.usage_quotas set quota_limit = 0.01 where metric = 'usd'")
    # gpt-4o-mini, prompt estimate + 5000 output tokens: 5000 * 0.6 / 1e6 = 0.003 (+ prompt)
    request = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": _messages(),
        "max_tokens": 5000,
    }
    # The provider answers slowly, so every reservation is decided before any call settles
    # (a settle frees the unused part of its hold, which could admit a fourth call).
    fake.latency = 1.0
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            tracker.execute_with_tracking(request, {"organization_id": ORG})
            outcomes.append("ok")
        except QuotaExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes).count("ok") == 3
    assert fake.request_count() == 3
    usage, reserved = _quota_totals(conn)["usd"]
    assert usage == 3 * Decimal("0.0003") and reserved == 0


def test_sdk_responses_are_priced_exactly(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
) -> None:
    """Responses from the official openai, anthropic and google-genai SDKs, pointed at the
    fake provider, go through track_usage and are priced to the last decimal."""
    import anthropic
    import openai
    from google import genai
    from google.genai import types

    oa = openai.OpenAI(base_url=f"{fake.url}/v1", api_key="x", max_retries=0)
    chat = oa.chat.completions.create(model="gpt-4o-mini", messages=_messages())  # type: ignore[arg-type]
    resp = oa.responses.create(model="gpt-4o-mini", input="hi")
    an = anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)
    msg = an.messages.create(model="claude-sonnet-4-5", max_tokens=400, messages=_messages())  # type: ignore[arg-type]
    gg = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=fake.url))
    gem = gg.models.generate_content(model="gemini-2.5-flash", contents="hi")
    ctx = {"organization_id": ORG}
    records = [
        tracker.track_usage(ctx, "openai", "gpt-4o-mini", chat),
        tracker.track_usage(ctx, "openai", "gpt-4o-mini", resp),
        tracker.track_usage(ctx, "anthropic", "claude-sonnet-4-5", msg),
        tracker.track_usage(ctx, "google", "gemini-2.5-flash", gem),
    ]
    assert [r.cost for r in records] == [
        Decimal("0.0003"),
        Decimal("0.0003"),
        Decimal("0.0060525"),
        Decimal("0.000894"),
    ]
    counts = [r.usage.model_copy(update={"service_tier": None}) for r in records]
    assert counts == [FULL_USAGE, FULL_USAGE, FULL_USAGE, GEMINI_USAGE]
    assert records[0].usage.reasoning_tokens == 120


def test_module_level_functions_use_the_environment(
    db_url: str,
    org: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    conn: psycopg.Connection[Any],
) -> None:
    """quotaflow.track_usage / check_quota / get_quota_status / estimate_cost work on a
    default tracker configured from DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("QUOTAFLOW_OUTBOX_PATH", str(tmp_path / "o.db"))
    monkeypatch.setattr(quotaflow, "_default", None)
    rec = quotaflow.track_usage(
        {"organization_id": ORG},
        "openai",
        "gpt-4o-mini",
        {"usage": {"prompt_tokens": 1000, "completion_tokens": 0}},
    )
    assert rec.cost == Decimal("0.00015")
    [usd, _requests] = sorted(
        quotaflow.check_quota(ORG, "openai", "gpt-4", "0.01"), key=lambda q: q.metric != "usd"
    )
    assert usd.allowed and usd.current_usage == Decimal("0.00015")
    status = quotaflow.get_quota_status(ORG)
    assert {s.metric for s in status} == {"usd", "requests"}
    # 1000 output tokens of gpt-4 at $60/M = 0.06, plus the prompt's estimate at $30/M
    estimate = quotaflow.estimate_cost("openai", "gpt-4", _messages(), 1000)
    assert Decimal("0.06") < estimate < Decimal("0.061")
    quotaflow.get_default_tracker().close()
    monkeypatch.setattr(quotaflow, "_default", None)


def test_track_failure_writes_a_failure_row(
    tracker: Tracker, conn: psycopg.Connection[Any]
) -> None:
    """The seed's manual pattern for failures: one row, success false, its error message."""
    rec = tracker.track_failure(
        {"organization_id": ORG, "request_id": "tf"},
        "openai",
        "gpt-4o",
        "timeout after 30s",
        usage=Usage(),
    )
    assert not rec.success and rec.cost == 0
    assert conn.execute(
        "select success, error_message from public.api_usage_logs where request_id = 'tf'"
    ).fetchone() == (False, "timeout after 30s")


def test_public_api_is_pinned() -> None:
    """The package exports exactly this API (change it on purpose, not by accident)."""
    assert sorted(quotaflow.__all__) == sorted(
        [
            "AIModelRequest",
            "AIModelResponse",
            "AggregatedUsage",
            "AsyncTrackedSdkManager",
            "AsyncTrackedSdkStream",
            "AsyncTrackedStream",
            "AsyncTracker",
            "AuthorizationError",
            "Backend",
            "BackendUnavailableError",
            "ConfigurationError",
            "ExecutionContext",
            "HttpBackend",
            "IdempotencyConflictError",
            "PostgresBackend",
            "PricingNotFoundError",
            "ProviderError",
            "QuotaCheck",
            "QuotaAlert",
            "QuotaExceededError",
            "QuotaStatus",
            "QuotaflowError",
            "TrackedSdkManager",
            "TrackedSdkStream",
            "TrackedStream",
            "Tracker",
            "TrackingError",
            "Usage",
            "UsageEvent",
            "UsageFilters",
            "UsageRecord",
            "ValidationError",
            "check_quota",
            "estimate_cost",
            "execute_with_tracking",
            "extract_usage",
            "get_default_tracker",
            "get_quota_status",
            "track_failure",
            "track_usage",
            "wrap_with_tracking",
        ]
    )
    for name in quotaflow.__all__:
        assert getattr(quotaflow, name) is not None


@pytest.mark.parametrize(
    ("provider", "model", "price"),
    [("openai", "text-embedding-3-small", "0.02"), ("google", "gemini-embedding-001", "0.15")],
)
def test_embeddings_are_executed_and_priced_on_input_tokens(
    tracker: Tracker,
    conn: psycopg.Connection[Any],
    fake: FakeProviderServer,
    provider: str,
    model: str,
    price: str,
) -> None:
    """api=embeddings: every message is one input; nothing is reserved for output; the row is
    priced on input tokens (OpenAI reports them, Gemini does not: estimated and flagged)."""
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok) values (%s, %s, %s, 0)",
        (provider, model, price),
    )
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    request = {
        "provider": provider,
        "api": "embeddings",
        "model": model,
        "messages": [{"role": "user", "content": t} for t in texts],
    }
    response = tracker.execute_with_tracking(request, {"organization_id": ORG})
    assert response.embeddings is not None and len(response.embeddings) == 2
    assert response.usage.output_tokens == 0
    (held,) = conn.execute("select estimated_tokens from public.quota_reservations").fetchone()
    assert held == count_message_tokens(provider, model, request["messages"])  # no output held
    [row] = _log_rows(conn)
    input_tokens, output_tokens, cost, estimated = row[1], row[2], row[6], row[8]
    assert output_tokens == 0 and cost == Decimal(price) * input_tokens / 1_000_000
    if provider == "openai":
        assert (input_tokens, estimated) == (FULL_USAGE.input_tokens, False)
        sent = fake.last_request
        assert sent is not None and sent.body["input"] == texts
    else:
        assert estimated and input_tokens == held
        sent = fake.last_request
        assert sent is not None and sent.route == "batchEmbedContents"
        assert len(sent.body["requests"]) == 2
        one = tracker.execute_with_tracking(
            {**request, "messages": request["messages"][:1]}, {"organization_id": ORG}
        )
        assert one.embeddings is not None and len(one.embeddings) == 1
        assert fake.last_request is not None and fake.last_request.route == "embedContent"


def test_an_openai_embeddings_response_is_tracked_after_the_fact(
    tracker: Tracker, conn: psycopg.Connection[Any]
) -> None:
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok) values ('openai', 'text-embedding-3-large', 0.13, 0)"
    )
    response = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "text-embedding-3-large",
        "usage": {"prompt_tokens": 5000, "total_tokens": 5000},
    }
    record = tracker.track_usage(
        {"organization_id": ORG}, "openai", "text-embedding-3-large", response
    )
    assert record.usage.input_tokens == 5000 and record.cost == Decimal("0.00065")


def test_embeddings_refuse_streams_and_providers_without_them(tracker: Tracker) -> None:
    base = {"api": "embeddings", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(quotaflow.ValidationError, match="do not stream"):
        tracker.execute_with_tracking(
            {**base, "provider": "openai", "model": "text-embedding-3-small", "stream": True},
            {"organization_id": ORG},
        )
    with pytest.raises(quotaflow.ValidationError, match="encoding_format"):
        tracker.execute_with_tracking(
            {**base, "provider": "openai", "model": "text-embedding-3-small",
             "extra": {"encoding_format": "base64"}},
            {"organization_id": ORG},
        )  # fmt: skip
    with pytest.raises(quotaflow.ValidationError, match="no 'embeddings' API"):
        tracker.execute_with_tracking(
            {**base, "provider": "anthropic", "model": "claude-sonnet-4-5"},
            {"organization_id": ORG},
        )
