"""Invoice arithmetic: what the providers bill, priced by the database to the exact numeric.

Each case is a call's usage as the provider reports it (quotaflow's normalised columns plus
its billed dimensions) and the figure written out by hand from the list prices in
``supabase/migrations/20261122000300_pricing_catalogue.sql`` (USD per million tokens), the
providers' rules (``provider_billing_rules``, ``dimension_defaults``: Anthropic bills a 1-hour
cache write at 2x input and web searches at $10 per 1,000) and, for audio, the rates a test
row gives. ``public.estimate_usage_cost`` is record_usage's arithmetic; a few cases also go
through record_usage, the tracker and the fake provider.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from quotaflow import Tracker, Usage
from quotaflow.providers import ProviderClient
from quotaflow.testing import FakeProviderServer

from tests.provider_fixtures import API_KEYS, FAST_RETRY, base_urls

D = Decimal
Conn = psycopg.Connection[Any]

# (id, provider, model, input, output, cached, cache_write, details, expected USD)
CASES: list[tuple[str, str, str, int, int, int, int, dict[str, int], str]] = [
    # OpenAI gpt-4o $2.50 in / $10 out / $1.25 cached; writes are not billed apart
    ("gpt-4o plain", "openai", "gpt-4o", 1000, 500, 0, 0, {}, "0.0075"),
    ("gpt-4o cached", "openai", "gpt-4o", 10_000, 500, 4000, 0, {}, "0.025"),
    ("gpt-4o write as input", "openai", "gpt-4o", 1000, 0, 0, 200, {}, "0.0025"),
    ("gpt-4o dated snapshot", "openai", "gpt-4o-2024-08-06", 1000, 500, 0, 0, {}, "0.0075"),
    ("gpt-4o provider prefix", "openai", "openai/gpt-4o", 1000, 500, 0, 0, {}, "0.0075"),
    ("gpt-4o-mini cached", "openai", "gpt-4o-mini", 1_000_000, 100_000, 800_000, 0, {}, "0.15"),
    ("gpt-4.1 1M each", "openai", "gpt-4.1", 1_000_000, 1_000_000, 0, 0, {}, "10"),
    ("o3 reasoning as output", "openai", "o3", 2000, 3000, 0, 0, {}, "0.028"),
    # gpt-4o-audio-preview (a test row): $2.50/$10 text, $40/$80 audio
    ("audio in and out", "openai", "gpt-4o-audio-preview", 1000, 500, 0, 0,
     {"audio_input": 600, "audio_output": 300}, "0.051"),
    ("audio model, text only", "openai", "gpt-4o-audio-preview", 1000, 500, 0, 0, {}, "0.0075"),
    # Anthropic claude-sonnet-4-5: $3 / $15 / $0.30 read / $3.75 5m write; above 200k
    # $6 / $22.50 / $0.60 / $7.50; 1h write 2x input
    ("sonnet plain", "anthropic", "claude-sonnet-4-5", 1000, 500, 0, 0, {}, "0.0105"),
    ("sonnet cache read", "anthropic", "claude-sonnet-4-5", 10_000, 500, 8000, 0, {}, "0.0159"),
    ("sonnet 5m write", "anthropic", "claude-sonnet-4-5", 10_000, 500, 0, 8000, {}, "0.0435"),
    # the case: in 20, 1h write 8,000, out 250 -> invoice $0.05181
    ("sonnet 1h write", "anthropic", "claude-sonnet-4-5", 8020, 250, 0, 8000,
     {"cache_write_1h": 8000}, "0.05181"),
    ("sonnet 5m + 1h", "anthropic", "claude-sonnet-4-5", 8020, 250, 0, 8000,
     {"cache_write_1h": 4000}, "0.04281"),
    ("sonnet dated 1h", "anthropic", "claude-sonnet-4-5-20250929", 8020, 250, 0, 8000,
     {"cache_write_1h": 8000}, "0.05181"),
    ("sonnet just below 200k", "anthropic", "claude-sonnet-4-5", 199_999, 1000, 0, 0, {},
     "0.614997"),
    ("sonnet at 200k", "anthropic", "claude-sonnet-4-5", 200_000, 1000, 0, 0, {}, "0.615"),
    ("sonnet above 200k", "anthropic", "claude-sonnet-4-5", 200_001, 1000, 0, 0, {},
     "1.222506"),
    ("sonnet long + read", "anthropic", "claude-sonnet-4-5", 250_000, 1000, 100_000, 0, {},
     "0.9825"),
    ("sonnet long + 1h", "anthropic", "claude-sonnet-4-5", 250_000, 1000, 0, 50_000,
     {"cache_write_1h": 50_000}, "1.8225"),
    ("sonnet web search", "anthropic", "claude-sonnet-4-5", 1000, 500, 0, 0,
     {"web_search": 3}, "0.0405"),
    ("sonnet searches only", "anthropic", "claude-sonnet-4-5", 0, 0, 0, 0,
     {"web_search": 1000}, "10"),
    # claude-haiku-4-5 $1 / $5 / $0.10 / $1.25; claude-opus-4-1 $15 / $75 / $1.50 / $18.75
    ("haiku 1h write", "anthropic", "claude-haiku-4-5", 5000, 100, 0, 4000,
     {"cache_write_1h": 4000}, "0.0095"),
    ("haiku 1M each", "anthropic", "claude-haiku-4-5", 1_000_000, 1_000_000, 0, 0, {}, "6"),
    ("opus 5m write", "anthropic", "claude-opus-4-1", 10_000, 0, 0, 10_000, {}, "0.1875"),
    ("opus 1h write", "anthropic", "claude-opus-4-1", 10_000, 0, 0, 10_000,
     {"cache_write_1h": 10_000}, "0.3"),
    ("opus latest alias", "anthropic", "claude-3-5-sonnet-latest", 1000, 1000, 0, 0, {},
     "0.018"),
    # Gemini 2.5 Pro $1.25 / $10 / $0.125; above 200k $2.50 / $15 / $0.25
    ("pro plain", "google", "gemini-2.5-pro", 1000, 1000, 0, 0, {}, "0.01125"),
    ("pro cached", "google", "gemini-2.5-pro", 100_000, 1000, 50_000, 0, {}, "0.07875"),
    ("pro at 200k", "google", "gemini-2.5-pro", 200_000, 1000, 0, 0, {}, "0.26"),
    ("pro above 200k", "google", "gemini-2.5-pro", 200_001, 1000, 0, 0, {}, "0.5150025"),
    ("pro long cached", "google", "gemini-2.5-pro", 300_000, 2000, 100_000, 0, {}, "0.555"),
    ("pro audio, no rate", "google", "gemini-2.5-pro", 1000, 0, 0, 0, {"audio_input": 1000},
     "0.00125"),
    # Gemini 2.5 Flash $0.30 / $2.50 / $0.03; audio input $1.00 (a test rate)
    ("flash 1M each", "google", "gemini-2.5-flash", 1_000_000, 1_000_000, 0, 0, {}, "2.8"),
    ("flash thinking as output", "google", "gemini-2.5-flash", 1000, 5000, 0, 0, {}, "0.0128"),
    ("flash cached", "google", "gemini-2.5-flash", 10_000, 100, 8000, 0, {}, "0.00109"),
    ("flash audio", "google", "gemini-2.5-flash", 10_000, 100, 0, 0, {"audio_input": 4000},
     "0.00605"),
    ("flash models/ prefix", "google", "models/gemini-2.5-flash", 1000, 0, 0, 0, {}, "0.0003"),
    # xAI grok-4 $3 / $15 / $0.75; from 128k reached $6 / $30, cached scaled to $1.50
    ("grok-4 plain", "xai", "grok-4", 1000, 1000, 0, 0, {}, "0.018"),
    ("grok-4 cached", "xai", "grok-4", 10_000, 100, 5000, 0, {}, "0.02025"),
    ("grok-4 just below 128k", "xai", "grok-4", 127_999, 1000, 0, 0, {}, "0.398997"),
    ("grok-4 at 128k", "xai", "grok-4", 128_000, 1000, 0, 0, {}, "0.798"),
    ("grok-4 long cached", "xai", "grok-4", 150_000, 3000, 100_000, 0, {}, "0.54"),
    ("grok-4 dated", "xai", "grok-4-0709", 1000, 1000, 0, 0, {}, "0.018"),
    # grok-4.7 $2 / $6 / $0.50; from 200k reached $4 / $12 / $1.00
    ("grok-4.7 at 200k", "xai", "grok-4.7", 200_000, 1500, 0, 0, {}, "0.818"),
    ("grok-4.7 below", "xai", "grok-4.7", 199_999, 1500, 0, 0, {}, "0.408998"),
    ("grok-4.7 long cached", "xai", "grok-4.7", 250_000, 1000, 50_000, 0, {}, "0.862"),
    ("grok-3-mini reasoning", "xai", "grok-3-mini", 1000, 4000, 0, 0, {}, "0.0023"),
    # grok-4-fast $0.20 / $0.50, below its 128k tier
    ("grok-4 fast alias", "xai", "grok-4-fast-reasoning", 100_000, 100_000, 0, 0, {}, "0.07"),
    ("grok-4 fast at its tier", "xai", "grok-4-fast", 128_000, 0, 0, 0, {}, "0.0512"),
    # more of each provider's usual shapes
    ("gpt-4o-mini plain", "openai", "gpt-4o-mini", 1000, 1000, 0, 0, {}, "0.00075"),
    ("gpt-4o-mini audio, no rate", "openai", "gpt-4o-mini", 1000, 0, 0, 0, {"audio_input": 500},
     "0.00015"),
    ("gpt-4.1 cached", "openai", "gpt-4.1", 100_000, 0, 50_000, 0, {}, "0.125"),
    ("o3 all cached", "openai", "o3", 10_000, 1000, 10_000, 0, {}, "0.013"),
    ("nothing used", "openai", "gpt-4o", 0, 0, 0, 0, {}, "0"),
    ("sonnet read + 5m + 1h", "anthropic", "claude-sonnet-4-5", 30_000, 500, 10_000, 10_000,
     {"cache_write_1h": 4000}, "0.087"),
    ("sonnet long 5m write", "anthropic", "claude-sonnet-4-5", 250_000, 1000, 0, 50_000, {},
     "1.5975"),
    ("sonnet long + search", "anthropic", "claude-sonnet-4-5", 200_001, 0, 0, 0,
     {"web_search": 1}, "1.210006"),
    ("haiku cache read", "anthropic", "claude-haiku-4-5", 10_000, 100, 9000, 0, {}, "0.0024"),
    ("opus all read", "anthropic", "claude-opus-4-1", 10_000, 1000, 10_000, 0, {}, "0.09"),
    ("opus searches", "anthropic", "claude-opus-4-1", 0, 0, 0, 0, {"web_search": 5}, "0.05"),
    ("pro output only", "google", "gemini-2.5-pro", 0, 1000, 0, 0, {}, "0.01"),
    ("pro at 200k cached", "google", "gemini-2.5-pro", 200_000, 0, 100_000, 0, {}, "0.1375"),
    ("pro above, audio no rate", "google", "gemini-2.5-pro", 200_001, 0, 0, 0,
     {"audio_input": 1000}, "0.5000025"),
    ("flash all audio", "google", "gemini-2.5-flash", 1000, 0, 0, 0, {"audio_input": 1000},
     "0.001"),
    ("flash search, no rate", "google", "gemini-2.5-flash", 1000, 0, 0, 0, {"web_search": 1},
     "0.0003"),
    ("grok-4 long output", "xai", "grok-4", 200_000, 1000, 0, 0, {}, "1.23"),
    ("grok-4.7 at 200k cached", "xai", "grok-4.7", 200_000, 0, 100_000, 0, {}, "0.5"),
    ("grok-3-mini cached", "xai", "grok-3-mini", 10_000, 0, 5000, 0, {}, "0.001875"),
    ("grok-4.20", "xai", "grok-4.20", 1000, 1000, 0, 0, {}, "0.008"),
    ("grok-4.20 dated alias", "xai", "grok-4.20-0309-reasoning", 1000, 1000, 0, 0, {}, "0.008"),
]  # fmt: skip


@pytest.fixture
def priced(conn: Conn) -> Conn:
    """The catalogue plus the audio rates the cases use (not in the seeded catalogue)."""
    (audio_id,) = conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok, cached_input_usd_per_mtok) values"
        " ('openai', 'gpt-4o-audio-preview', 2.50, 10, null) returning id"
    ).fetchone()
    conn.execute(
        "insert into public.price_rates (price_id, dimension, usd) values"
        " (%s, 'audio_input', 40), (%s, 'audio_output', 80)",
        (audio_id, audio_id),
    )
    conn.execute(
        "insert into public.price_rates (price_id, dimension, usd)"
        " select id, 'audio_input', 1.00 from public.cost_estimates"
        " where provider = 'google' and model = 'gemini-2.5-flash' and effective_to is null"
    )
    return conn


# Service tiers: a test row per tier (50% batch, priority and flex as the providers list them)
TIER_ROWS = [
    # provider, model, tier, input, output, cached, write, threshold, long in, long out,
    # long cached, long write
    ("openai", "gpt-4o", "batch", "1.25", "5", "0.625", None, None, None, None, None, None),
    ("openai", "gpt-4o", "priority", "4.25", "17", "2.125", None, None, None, None, None, None),
    ("openai", "gpt-5", "flex", "0.625", "5", "0.0625", None, None, None, None, None, None),
    ("anthropic", "claude-sonnet-4-5", "batch", "1.50", "7.50", "0.15", "1.875", 200_000,
     "3", "11.25", "0.30", "3.75"),
]  # fmt: skip

# (id, provider, model, tier, input, output, cached, cache_write, details, expected USD)
TIER_CASES: list[tuple[str, str, str, str, int, int, int, int, dict[str, int], str]] = [
    ("gpt-4o batch", "openai", "gpt-4o", "batch", 1000, 500, 0, 0, {}, "0.00375"),
    ("gpt-4o priority", "openai", "gpt-4o", "priority", 1000, 500, 0, 0, {}, "0.01275"),
    ("gpt-4o default is standard", "openai", "gpt-4o", "default", 1000, 500, 0, 0, {}, "0.0075"),
    ("gpt-4o unknown tier is standard", "openai", "gpt-4o", "scale", 1000, 500, 0, 0, {},
     "0.0075"),
    ("tier without a row", "openai", "gpt-4o-mini", "batch", 1000, 1000, 0, 0, {}, "0.00075"),
    ("gpt-5 flex cached", "openai", "gpt-5", "flex", 10_000, 1000, 5000, 0, {}, "0.0084375"),
    ("sonnet batch", "anthropic", "claude-sonnet-4-5", "batch", 1000, 500, 0, 0, {}, "0.00525"),
    ("sonnet batches alias", "anthropic", "claude-sonnet-4-5", "batches", 1000, 500, 0, 0, {},
     "0.00525"),
    # the provider's 1h rule applies to the tier's input price: 2 x $1.50
    ("sonnet batch 1h write", "anthropic", "claude-sonnet-4-5", "batch", 8020, 250, 0, 8000,
     {"cache_write_1h": 8000}, "0.025905"),
    ("sonnet batch above 200k", "anthropic", "claude-sonnet-4-5", "batch", 200_001, 1000, 0, 0,
     {}, "0.611253"),
]  # fmt: skip


@pytest.fixture
def tiered(priced: Conn) -> Conn:
    for r in TIER_ROWS:
        priced.execute(
            "insert into public.cost_estimates (provider, model, service_tier,"
            " input_usd_per_mtok, output_usd_per_mtok, cached_input_usd_per_mtok,"
            " cache_write_usd_per_mtok, long_context_threshold, long_input_usd_per_mtok,"
            " long_output_usd_per_mtok, long_cached_input_usd_per_mtok,"
            " long_cache_write_usd_per_mtok)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            r,
        )
    return priced


@pytest.mark.parametrize(
    ("provider", "model", "tier", "inp", "out", "cached", "write", "details", "expected"),
    [c[1:] for c in TIER_CASES],
    ids=[c[0] for c in TIER_CASES],
)
def test_each_service_tier_case_is_priced_at_its_tier(
    tiered: Conn,
    provider: str,
    model: str,
    tier: str,
    inp: int,
    out: int,
    cached: int,
    write: int,
    details: dict[str, int],
    expected: str,
) -> None:
    (cost,) = tiered.execute(
        "select public.estimate_usage_cost(%s, %s, %s, %s, %s, %s, %s, service_tier => %s)",
        (provider, model, inp, out, cached, write, json.dumps(details), tier),
    ).fetchone()
    assert cost == D(expected)


def test_a_batch_call_is_recorded_at_the_batch_price(tiered: Conn) -> None:
    (org,) = tiered.execute(
        "insert into public.organizations (name) values ('Batch') returning id"
    ).fetchone()
    row = tiered.execute(
        "select cost_usd, price_id from public.record_usage(organization_id => %s,"
        " request_id => 'b-1', provider => 'openai', model => 'gpt-4o', input_tokens => 1000,"
        " output_tokens => 500, service_tier => 'batch')",
        (org,),
    ).fetchone()
    assert row[0] == D("0.00375")
    assert tiered.execute(
        "select service_tier from public.cost_estimates where id = %s", (row[1],)
    ).fetchone() == ("batch",)


@pytest.mark.parametrize(
    ("provider", "model", "inp", "out", "cached", "write", "details", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_each_invoice_case_is_priced_to_the_exact_numeric(
    priced: Conn,
    provider: str,
    model: str,
    inp: int,
    out: int,
    cached: int,
    write: int,
    details: dict[str, int],
    expected: str,
) -> None:
    (cost,) = priced.execute(
        "select public.estimate_usage_cost(%s, %s, %s, %s, %s, %s, %s)",
        (provider, model, inp, out, cached, write, json.dumps(details)),
    ).fetchone()
    assert cost == D(expected)


def test_record_usage_charges_and_keeps_the_dimensions_and_the_tier(priced: Conn) -> None:
    (org,) = priced.execute(
        "insert into public.organizations (name) values ('Invoices') returning id"
    ).fetchone()
    priced.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
        " values (%s, 'monthly', 'usd', 10)",
        (org,),
    )
    row = priced.execute(
        "select cost_usd, credits from public.record_usage(organization_id => %s,"
        " request_id => 'inv-1', provider => 'anthropic', model => 'claude-sonnet-4-5',"
        " input_tokens => 8020, output_tokens => 250, cache_write_tokens => 8000,"
        " usage_details => '{\"cache_write_1h\": 8000, \"web_search\": 2}',"
        " service_tier => 'priority')",
        (org,),
    ).fetchone()
    assert row == (D("0.07181"), D("71.81"))  # 0.05181 + 2 searches at $10 per 1,000
    assert priced.execute(
        "select usage_details, service_tier from public.api_usage_logs"
    ).fetchone() == ({"cache_write_1h": 8000, "web_search": 2}, "priority")
    assert priced.execute("select current_usage from public.usage_quotas").fetchone() == (
        D("0.07181"),
    )
    # The same request again with other dimensions is a conflict, not a replay.
    with pytest.raises(psycopg.Error) as exc:
        priced.execute(
            "select * from public.record_usage(organization_id => %s, request_id => 'inv-1',"
            " provider => 'anthropic', model => 'claude-sonnet-4-5', input_tokens => 8020,"
            " output_tokens => 250, cache_write_tokens => 8000,"
            " usage_details => '{\"cache_write_1h\": 10}')",
            (org,),
        )
    assert exc.value.sqlstate == "QF003"


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ('{"teleport": 1}', "unknown dimension teleport"),
        ('{"web_search": -1}', "whole number"),
        ('{"web_search": 1.5}', "whole number"),
        ('{"cache_write_1h": 9000}', "more than cache_write_tokens"),
        ('{"audio_output": 300}', "more than output_tokens"),
        ('{"audio_input": 21}', "uncached input"),
        ('[1]', "must be a JSON object"),
    ],
)
def test_impossible_dimensions_are_refused_and_nothing_is_written(
    priced: Conn, details: str, message: str
) -> None:
    (org,) = priced.execute(
        "insert into public.organizations (name) values ('Bad dims') returning id"
    ).fetchone()
    with pytest.raises(psycopg.Error) as exc:
        priced.execute(
            "select * from public.record_usage(organization_id => %s, request_id => 'bad',"
            " provider => 'anthropic', model => 'claude-sonnet-4-5', input_tokens => 8020,"
            " output_tokens => 250, cache_write_tokens => 8000, usage_details => %s)",
            (org, details),
        )
    assert exc.value.sqlstate == "22023" and message in str(exc.value)
    assert priced.execute("select count(*) from public.api_usage_logs").fetchone() == (0,)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_anthropic_call_with_1h_writes_and_searches_is_billed_as_invoiced(
    db_url: str, priced: Conn, tmp_path: Path, stream: bool
) -> None:
    """Through the tracker and the fake provider, which reports usage as Anthropic does
    (cache_creation split, server_tool_use, service_tier)."""
    (org,) = priced.execute(
        "insert into public.organizations (name) values ('Fake invoices') returning id"
    ).fetchone()
    usage = Usage(
        input_tokens=8020,
        output_tokens=250,
        cache_write_tokens=8000,
        details={"cache_write_1h": 8000, "web_search": 2},
        service_tier="standard",
    )
    with FakeProviderServer(usage=usage, reply_text="ok") as fake:
        providers = ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake), retry=FAST_RETRY)
        with Tracker(database_url=db_url, providers=providers, outbox=tmp_path / "o.db") as t:
            request = {
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 300,
                "stream": stream,
            }
            response = t.execute_with_tracking(request, {"organization_id": str(org)})
            if stream:
                assert "".join(response) == "ok"
                response = response.response
        providers.close()
    assert response.usage == usage
    assert response.cost == D("0.07181")


def test_batch_results_tracked_after_the_fact_are_priced_at_the_batch_tier(
    db_url: str, tiered: Conn, tmp_path: Path
) -> None:
    (org,) = tiered.execute(
        "insert into public.organizations (name) values ('Batch results') returning id"
    ).fetchone()
    line = {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}  # a Batch API result
    with Tracker(database_url=db_url, outbox=tmp_path / "o.db") as t:
        record = t.track_usage(
            {"organization_id": str(org)}, "openai", "gpt-4o", line, service_tier="batch"
        )
    assert record.cost == D("0.00375") and record.usage.service_tier == "batch"
