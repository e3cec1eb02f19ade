"""Pricing in SQL: estimate_cost arithmetic, alias resolution, unknown models, effective dates.

Expected costs are worked out by hand from the list prices in
``supabase/migrations/20261122000300_pricing_catalogue.sql`` (USD per million tokens) and
compared exactly: money is ``numeric`` in SQL and ``Decimal`` here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

D = Decimal
MTOK = D(1_000_000)


def _org(conn: psycopg.Connection[Any], name: str = "Pricing Org") -> Any:
    row = conn.execute(
        "insert into public.organizations (name) values (%s) returning id", (name,)
    ).fetchone()
    assert row is not None
    return row[0]


def _estimate(conn: psycopg.Connection[Any], *args: Any) -> Decimal:
    row = conn.execute("select public.estimate_cost(%s, %s, %s, %s, %s, %s)", args).fetchone()
    assert row is not None
    return row[0]


def _breakdown(conn: psycopg.Connection[Any], provider: str, model: str) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "select * from public.estimate_cost_breakdown(%s, %s, 1000, 100)", (provider, model)
    ).fetchone()
    assert row is not None
    return row


def _record(conn: psycopg.Connection[Any], org: Any, rid: str, **kw: Any) -> dict[str, Any]:
    args = {"organization_id": org, "request_id": rid, "provider": "openai", "model": "gpt-4o"}
    args.update(kw)
    named = ", ".join(f"{k} => %({k})s" for k in args)
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(f"select * from public.record_usage({named})", args).fetchone()
    assert row is not None
    return row


def test_openai_cached_input_is_priced_at_the_cached_rate(conn: psycopg.Connection[Any]) -> None:
    """gpt-4o: 10k prompt tokens of which 4k cached, 500 output → $0.025 exactly."""
    # 6000 uncached × $2.50 + 4000 cached × $1.25 + 500 output × $10.00, per million
    expected = (D(6000) * D("2.50") + D(4000) * D("1.25") + D(500) * D("10.00")) / MTOK
    assert expected == D("0.025")
    assert _estimate(conn, "openai", "gpt-4o", 10_000, 500, 4_000, 0) == expected


def test_anthropic_cache_writes_and_reads_are_priced_separately(
    conn: psycopg.Connection[Any],
) -> None:
    """claude-sonnet-4-5: cache reads at $0.30, cache writes at $3.75, the rest at $3 / $15."""
    # 20k prompt = 10k plain + 8k cache reads + 2k cache writes; 1k output.
    expected = (
        D(10_000) * D(3) + D(8_000) * D("0.30") + D(2_000) * D("3.75") + D(1_000) * D(15)
    ) / MTOK
    assert expected == D("0.0549")
    assert _estimate(conn, "anthropic", "claude-sonnet-4-5", 20_000, 1_000, 8_000, 2_000) == (
        expected
    )
    cur = conn.cursor(row_factory=dict_row)
    parts = cur.execute(
        "select * from public.estimate_cost_breakdown('anthropic', 'claude-sonnet-4-5',"
        " 20000, 1000, 8000, 2000)"
    ).fetchone()
    assert parts is not None
    assert parts["priced_model"] == "claude-sonnet-4-5"
    assert parts["long_context"] is False
    assert (parts["input_cost"], parts["cached_input_cost"]) == (D("0.03"), D("0.0024"))
    assert (parts["cache_write_cost"], parts["output_cost"]) == (D("0.0075"), D("0.015"))
    assert parts["total_cost"] == expected


def test_gemini_25_pro_long_context_tier_applies_above_200k_prompt_tokens(
    conn: psycopg.Connection[Any],
) -> None:
    """gemini-2.5-pro: ≤200k prompt at $1.25/$10, above it the whole call at $2.50/$15."""
    at_threshold = (D(200_000) * D("1.25") + D(2_000) * D(10)) / MTOK
    assert _estimate(conn, "google", "gemini-2.5-pro", 200_000, 2_000, 0, 0) == at_threshold
    # 250k prompt (50k cached at the long cached rate $0.25), 2k output at $15.
    above = (D(200_000) * D("2.50") + D(50_000) * D("0.25") + D(2_000) * D(15)) / MTOK
    assert above == D("0.5425")
    assert _estimate(conn, "google", "gemini-2.5-pro", 250_000, 2_000, 50_000, 0) == above
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "select long_context from public.estimate_cost_breakdown('google', 'gemini-2.5-pro',"
        " 250000, 2000, 50000, 0)"
    ).fetchone()
    assert row == {"long_context": True}


@pytest.mark.parametrize(
    ("provider", "model", "canonical"),
    [
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4o-mini", "gpt-4o-mini"),
        ("google", "models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("OpenAI", " GPT-4o ", "gpt-4o"),
    ],
)
def test_dated_snapshot_resolves_to_its_model(
    conn: psycopg.Connection[Any], provider: str, model: str, canonical: str
) -> None:
    """A snapshot name is priced as its model: exact name first, then without its date."""
    got = _breakdown(conn, provider, model)
    direct = _breakdown(conn, provider.strip().lower(), canonical)
    assert got["priced_model"] == canonical
    assert got["price_id"] == direct["price_id"]
    assert got["total_cost"] == direct["total_cost"]


def test_a_snapshot_with_its_own_price_is_priced_exactly(conn: psycopg.Connection[Any]) -> None:
    """gpt-4o-2024-05-13 has its own list price ($5/$15); the exact row wins over gpt-4o."""
    cost = _estimate(conn, "openai", "gpt-4o-2024-05-13", 1_000_000, 1_000_000, 0, 0)
    assert cost == D("20")
    assert _breakdown(conn, "openai", "gpt-4o-2024-05-13")["priced_model"] == "gpt-4o-2024-05-13"


def test_mini_snapshot_is_not_priced_as_the_bigger_model(conn: psycopg.Connection[Any]) -> None:
    """gpt-4o-mini-2024-07-18 costs gpt-4o-mini's $0.15/$0.60, not gpt-4o's $2.50/$10."""
    cost = _estimate(conn, "openai", "gpt-4o-mini-2024-07-18", 1_000_000, 1_000_000, 0, 0)
    assert cost == D("0.75")


@pytest.mark.parametrize(
    ("provider", "model", "priced"),
    [
        ("openai", "openai/gpt-4o", "gpt-4o"),
        ("google", "gemini/gemini-2.5-flash", "gemini-2.5-flash"),
        ("google", "models/gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
        ("google", "gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash"),
        ("google", "gemini-1.5-flash-002", "gemini-1.5-flash"),
        ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("anthropic", "claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
        ("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("xai", "grok-4-0709", "grok-4"),
        ("xai", "grok-4-fast-reasoning", "grok-4-fast"),
        ("openai", "gpt-5-codex", "gpt-5"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
    ],
)
def test_strict_resolution_accepts_prefixes_aliases_and_real_snapshots(
    conn: psycopg.Connection[Any], provider: str, model: str, priced: str
) -> None:
    assert _breakdown(conn, provider, model)["priced_model"] == priced


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("google", "gemini-3.5-flash-lite"),
        ("google", "gemini-1.5-flash-8b"),
        ("openai", "gpt-5.6-cyber"),
        ("openai", "gpt-4o-realtime-preview"),
        ("anthropic", "claude-sonnet-4-5-turbo"),
        ("xai", "grok-4-heavy"),
    ],
)
def test_a_variant_of_a_known_model_is_unknown_not_priced_as_its_parent(
    conn: psycopg.Connection[Any], provider: str, model: str
) -> None:
    with pytest.raises(psycopg.Error) as exc:
        _breakdown(conn, provider, model)
    assert exc.value.sqlstate == "QF002"


def test_an_unknown_model_is_refused_before_the_call_and_kept_unpriced_after_it(
    conn: psycopg.Connection[Any],
) -> None:
    """reserve_quota and estimate_cost refuse an unknown model (QF002): nothing is held. Usage
    recorded after the fact is never dropped: one row with its tokens, unpriced at cost 0,
    counted on request and token quotas, not on usd ones."""
    org = _org(conn)
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
        " values (%s, 'daily', 'requests', 10), (%s, 'daily', 'tokens', 1000),"
        " (%s, 'daily', 'usd', 1)",
        (org, org, org),
    )
    with pytest.raises(psycopg.Error) as exc:
        _estimate(conn, "openai", "gpt-9-ultra", 10, 10, 0, 0)
    assert exc.value.sqlstate == "QF002"
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "select * from public.reserve_quota(%s, 'r-unknown-2', 'openai', 'gpt-9-ultra',"
            " input_tokens => 10, max_output_tokens => 10)",
            (org,),
        )
    assert exc.value.sqlstate == "QF002"
    # 'gpt-4o' is not a prefix of 'gpt-4omni' either.
    with pytest.raises(psycopg.Error) as exc:
        _estimate(conn, "openai", "gpt-4omni", 10, 10, 0, 0)
    assert exc.value.sqlstate == "QF002"
    assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (0,)

    got = _record(conn, org, "r-unknown", model="gpt-9-ultra", input_tokens=10, output_tokens=7)
    assert (got["cost_usd"], got["price_id"], got["unpriced"], got["duplicate"]) == (
        0, None, True, False
    )
    again = _record(conn, org, "r-unknown", model="gpt-9-ultra", input_tokens=10, output_tokens=7)
    assert again["duplicate"] and again["unpriced"]
    row = conn.execute(
        "select input_tokens, output_tokens, cost_usd, unpriced, priced_model"
        " from public.api_usage_logs"
    ).fetchall()
    assert row == [(10, 7, 0, True, None)]
    usage = dict(conn.execute("select metric, current_usage from public.usage_quotas").fetchall())
    assert usage == {"requests": 1, "tokens": 17, "usd": 0}


def test_reprice_prices_unpriced_rows_at_their_time_and_charges_open_usd_windows(
    conn: psycopg.Connection[Any],
) -> None:
    org = _org(conn)
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
        " values (%s, 'monthly', 'usd', 100)",
        (org,),
    )
    _record(conn, org, "u-1", model="gpt-9-ultra", input_tokens=1_000_000, output_tokens=500_000)
    assert conn.execute("select * from public.reprice_usage()").fetchone() == (0, 1)
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok, effective_from) values ('openai', 'gpt-9-ultra', 2, 8, '2020-01-01')"
    )
    assert conn.execute("select * from public.reprice_usage()").fetchone() == (1, 0)
    # 1M input at $2 + 0.5M output at $8 = $6; credits at the organization's 1000 per USD.
    row = conn.execute(
        "select cost_usd, credits, unpriced, priced_model, price_id is not null"
        " from public.api_usage_logs"
    ).fetchone()
    assert row == (D(6), D(6000), False, "gpt-9-ultra", True)
    assert conn.execute("select current_usage from public.usage_quotas").fetchone() == (D(6),)
    assert conn.execute("select * from public.reprice_usage()").fetchone() == (0, 0)


def test_reprice_is_not_held_back_by_older_rows_still_without_a_price(
    conn: psycopg.Connection[Any],
) -> None:
    org = _org(conn)
    for i in range(3):  # the oldest: a model that stays unknown
        _record(conn, org, f"old-{i}", model="gpt-never", input_tokens=10,
                occurred_at="2026-01-01T00:00:00Z")  # fmt: skip
    _record(conn, org, "new-1", model="gpt-9-ultra", input_tokens=1_000_000)
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok, effective_from) values ('openai', 'gpt-9-ultra', 2, 8, '2020-01-01')"
    )
    assert conn.execute("select * from public.reprice_usage(max_rows => 2)").fetchone() == (1, 3)


def test_an_organizations_fallback_price_prices_unknown_models_both_ways(
    conn: psycopg.Connection[Any],
) -> None:
    org = _org(conn)
    conn.execute(
        "update public.organizations set fallback_provider = 'openai', fallback_model = 'gpt-4o'"
        " where id = %s",
        (org,),
    )
    held = conn.execute(
        "select reserved_cost from public.reserve_quota(%s, 'fb-1', 'openai', 'gpt-9-ultra',"
        " input_tokens => 1000000, max_output_tokens => 0)",
        (org,),
    ).fetchone()
    assert held == (D("2.5"),)
    conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit, model)"
        " values (%s, 'monthly', 'usd', 100, 'gpt-4o'), (%s, 'monthly', 'usd', 100, 'gpt-9-ultra')",
        (org, org),
    )
    got = _record(conn, org, "fb-1", model="gpt-9-ultra", input_tokens=1_000_000)
    assert (got["cost_usd"], got["unpriced"]) == (D("2.5"), False)
    # Quotas match the call's own model, not the fallback's.
    assert dict(
        conn.execute("select model, current_usage from public.usage_quotas").fetchall()
    ) == {"gpt-4o": 0, "gpt-9-ultra": D("2.5")}
    assert conn.execute("select model, priced_model from public.api_usage_logs").fetchone() == (
        "gpt-9-ultra",
        "gpt-4o",
    )


def test_price_change_is_effective_dated_and_never_moves_logged_costs(
    conn: psycopg.Connection[Any],
) -> None:
    """Close gpt-4o's row and add a new price: old logs keep cost and price_id, new calls and
    estimates use the new price, and a call that occurred before the change uses the old one."""
    org = _org(conn)
    tokens = {"input_tokens": 100_000, "output_tokens": 10_000}
    old_cost = (D(100_000) * D("2.50") + D(10_000) * D(10)) / MTOK  # $0.35
    new_cost = (D(100_000) * D(5) + D(10_000) * D(20)) / MTOK  # $0.70
    before = _record(conn, org, "before-change", **tokens)
    assert before["cost_usd"] == old_cost
    old_price_id = before["price_id"]

    row = conn.execute(
        "update public.cost_estimates set effective_to = now()"
        " where provider = 'openai' and model = 'gpt-4o' and effective_to is null"
        " returning effective_to"
    ).fetchone()
    assert row is not None
    changed_at = row[0]
    new_id = conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok, cached_input_usd_per_mtok, effective_from, source_url, checked_on)"
        " values ('openai', 'gpt-4o', 5, 20, 2.5, %s, 'https://openai.com/api/pricing',"
        " current_date) returning id",
        (changed_at,),
    ).fetchone()
    assert new_id is not None

    after = _record(conn, org, "after-change", **tokens)
    assert (after["cost_usd"], after["price_id"]) == (new_cost, new_id[0])
    # The snapshot alias follows the new price too.
    assert _breakdown(conn, "openai", "gpt-4o-2024-08-06")["price_id"] == new_id[0]

    backdated = _record(
        conn, org, "occurred-before-change", occurred_at=changed_at.replace(year=2025), **tokens
    )
    assert (backdated["cost_usd"], backdated["price_id"]) == (old_cost, old_price_id)
    assert _estimate_at(conn, "gpt-4o", changed_at.replace(year=2025)) == old_cost

    logged = dict(
        conn.execute(
            "select request_id, (cost_usd, price_id)::text from public.api_usage_logs"
        ).fetchall()
    )
    assert logged == {
        "before-change": f"({old_cost},{old_price_id})",
        "after-change": f"({new_cost},{new_id[0]})",
        "occurred-before-change": f"({old_cost},{old_price_id})",
    }
    # Two prices for the same instant are refused.
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
            " output_usd_per_mtok, effective_from) values ('openai', 'gpt-4o', 1, 1, now())"
        )
    assert exc.value.sqlstate == "23P01"


def _estimate_at(conn: psycopg.Connection[Any], model: str, at: Any) -> Decimal:
    row = conn.execute(
        "select public.estimate_cost('openai', %s, 100000, 10000, 0, 0, %s)", (model, at)
    ).fetchone()
    assert row is not None
    return row[0]


def test_catalogue_has_25_models_across_four_providers_with_sources(
    conn: psycopg.Connection[Any],
) -> None:
    """At least 25 current prices over OpenAI, Anthropic, Google and xAI, each sourced and dated."""
    rows = conn.execute(
        "select provider, count(*), count(*) filter (where source_url like 'https://%%'"
        " and checked_on is not null) from public.cost_estimates where effective_to is null"
        " group by provider"
    ).fetchall()
    per_provider = {p: (n, sourced) for p, n, sourced in rows}
    assert {"openai", "anthropic", "google", "xai"} <= set(per_provider)
    assert sum(n for n, _ in per_provider.values()) >= 25
    for provider, (n, sourced) in per_provider.items():
        assert n == sourced, f"{provider}: {n - sourced} prices without source_url/checked_on"
        assert n >= 3, provider


def test_a_model_with_its_own_price_is_not_priced_as_its_alias(
    conn: psycopg.Connection[Any],
) -> None:
    """gpt-5-chat-latest is an alias of gpt-5 until the catalogue prices it itself."""
    assert _breakdown(conn, "openai", "gpt-5-chat-latest")["priced_model"] == "gpt-5"
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok) values ('openai', 'gpt-5-chat-latest', 9, 9)"
    )
    assert _breakdown(conn, "openai", "gpt-5-chat-latest")["priced_model"] == "gpt-5-chat-latest"


@pytest.mark.parametrize(
    ("provider", "model", "prompt", "output", "expected"),
    [
        # xAI bills the long rate once the prompt reaches 200k ($4/$12 instead of $2/$6)
        ("xai", "grok-4.7", 200_000, 1_500, D("0.818")),
        ("xai", "grok-4.7", 199_999, 1_500, D("0.408998")),
        # Gemini only above it ($1.25/$10 up to 200k, $2.50/$15 beyond)
        ("google", "gemini-2.5-pro", 200_000, 1_000, D("0.26")),
        ("google", "gemini-2.5-pro", 200_001, 1_000, D("0.5150025")),
    ],
)
def test_a_long_context_tier_starts_where_the_provider_says(
    conn: psycopg.Connection[Any], provider: str, model: str, prompt: int, output: int, expected: D
) -> None:
    assert _estimate(conn, provider, model, prompt, output, 0, 0) == expected


def test_a_long_tier_without_cache_prices_scales_the_standard_cache_price(
    conn: psycopg.Connection[Any],
) -> None:
    """grok-4 above 128k: input $3 -> $6 (x2), so cached input $0.75 -> $1.50, not $6.
    50,000 uncached x $6 + 100,000 cached x $1.50 + 3,000 output x $30, per million."""
    row = _breakdown_of(conn, "xai", "grok-4", 150_000, 3_000, 100_000)
    assert row["long_context"] is True
    assert row["cached_input_cost"] == D("0.15")
    assert row["total_cost"] == D("0.3") + D("0.15") + D("0.09")


def _breakdown_of(
    conn: psycopg.Connection[Any], provider: str, model: str, *tokens: int
) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "select * from public.estimate_cost_breakdown(%s, %s, %s, %s, %s)",
        (provider, model, *tokens),
    ).fetchone()
    assert row is not None
    return row
