"""Quotas in SQL: the seed's example, reserve → record, idempotency, scoping, expiry.

Everything runs as the superuser ``postgres`` (the functions' own grants are tested in
``test_sql_rls.py``). Costs are compared exactly as ``Decimal``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

D = Decimal
SEED_ORG = "00000000-0000-4000-8000-00000000a11c"
# gpt-4o at $2.50 / $10.00 per million tokens: 1000 prompt + 100 output tokens.
GPT4O_1000_100 = D("0.0035")

Conn = psycopg.Connection[Any]


def make_org(conn: Conn, name: str = "Org", time_zone: str = "UTC") -> Any:
    row = conn.execute(
        "insert into public.organizations (name, time_zone) values (%s, %s) returning id",
        (name, time_zone),
    ).fetchone()
    assert row is not None
    return row[0]


def add_quota(conn: Conn, org: Any, limit: Any, **kw: Any) -> Any:
    cols = {"organization_id": org, "quota_limit": D(str(limit)), "quota_type": "daily", **kw}
    names = ", ".join(cols)
    marks = ", ".join(f"%({k})s" for k in cols)
    row = conn.execute(
        f"insert into public.usage_quotas ({names}) values ({marks}) returning id", cols
    ).fetchone()
    assert row is not None
    return row[0]


def quota(conn: Conn, quota_id: Any) -> dict[str, Any]:
    row = (
        conn.cursor(row_factory=dict_row)
        .execute("select * from public.usage_quotas where id = %s", (quota_id,))
        .fetchone()
    )
    assert row is not None
    return row


def balance(conn: Conn, quota_id: Any) -> tuple[Decimal, Decimal]:
    q = quota(conn, quota_id)
    return q["current_usage"], q["reserved"]


def reserve(conn: Conn, org: Any, rid: str, cost: Any = None, **kw: Any) -> dict[str, Any]:
    args = {
        "organization_id": org,
        "request_id": rid,
        "provider": "openai",
        "model": "gpt-4o",
        "estimated_cost": None if cost is None else D(str(cost)),
        **kw,
    }
    named = ", ".join(f"{k} => %({k})s" for k in args)
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(f"select * from public.reserve_quota({named})", args)
        .fetchone()
    )
    assert row is not None
    return row


def record(conn: Conn, org: Any, rid: str, **kw: Any) -> dict[str, Any]:
    args = {
        "organization_id": org,
        "request_id": rid,
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "output_tokens": 100,
        **kw,
    }
    named = ", ".join(f"{k} => %({k})s" for k in args)
    row = (
        conn.cursor(row_factory=dict_row)
        .execute(f"select * from public.record_usage({named})", args)
        .fetchone()
    )
    assert row is not None
    return row


def count(conn: Conn, table: str, where: str = "true", params: Any = ()) -> int:
    row = conn.execute(f"select count(*) from public.{table} where {where}", params).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- the seed's example


def _seed_example_quota(conn: Conn) -> Any:
    row = conn.execute(
        "insert into usage_quotas (organization_id, quota_type, quota_limit, current_usage,"
        f" reset_at) values ('{SEED_ORG}', 'daily', 1.00, 0.99, now() + interval '1 day')"
        " returning id"
    ).fetchone()
    assert row is not None
    return row[0]


def test_seed_quota_insert_is_accepted_as_written(seeded_conn: Conn) -> None:
    """The README's insert works verbatim; the window is the org's calendar day (São Paulo)."""
    qid = _seed_example_quota(seeded_conn)
    q = quota(seeded_conn, qid)
    assert (q["quota_limit"], q["current_usage"], q["reserved"]) == (D("1.00"), D("0.99"), 0)
    assert (q["metric"], q["enforcement"], q["time_zone"]) == ("usd", "hard", "America/Sao_Paulo")
    row = seeded_conn.execute(
        "select (now() at time zone 'America/Sao_Paulo')::date::timestamp"
        " at time zone 'America/Sao_Paulo'"
    ).fetchone()
    assert row is not None
    assert q["window_start"] == row[0]
    assert (q["reset_at"] - q["window_start"]).total_seconds() in (23 * 3600, 24 * 3600, 25 * 3600)


def test_seed_check_quota_query_works_as_written(seeded_conn: Conn) -> None:
    """check_quota('<org>', 'openai', 'gpt-4', 0.01) admits; 0.05 is refused by the $1 quota."""
    qid = _seed_example_quota(seeded_conn)
    cur = seeded_conn.cursor(row_factory=dict_row)
    rows = cur.execute(
        f"SELECT * FROM check_quota('{SEED_ORG}', 'openai', 'gpt-4', 0.01)"
    ).fetchall()
    assert rows and all(r["allowed"] for r in rows)
    assert qid in {r["quota_id"] for r in rows}

    rows = cur.execute(
        f"SELECT * FROM check_quota('{SEED_ORG}', 'openai', 'gpt-4', 0.05)"
    ).fetchall()
    binding = rows[0]  # binding quotas come first
    assert binding["allowed"] is False
    assert binding["quota_id"] == qid
    assert (binding["quota_limit"], binding["current_usage"]) == (D("1.00"), D("0.99"))
    assert (binding["remaining"], binding["quota_type"]) == (D("0.01"), "daily")
    assert [r["quota_id"] for r in rows if not r["allowed"]] == [qid]


def test_seed_reserve_of_five_cents_is_refused_naming_the_quota(seeded_conn: Conn) -> None:
    """$1.00 daily with $0.99 used refuses a $0.05 call with QF001 and holds nothing."""
    qid = _seed_example_quota(seeded_conn)
    with pytest.raises(psycopg.Error) as exc:
        reserve(seeded_conn, SEED_ORG, "seed-5c", "0.05", model="gpt-4")
    assert exc.value.sqlstate == "QF001"
    assert "Quota exceeded" in (exc.value.diag.message_primary or "")
    detail = json.loads(exc.value.diag.message_detail or "{}")
    assert detail["quota_id"] == str(qid)
    assert (detail["quota_type"], detail["metric"]) == ("daily", "usd")
    assert D(str(detail["quota_limit"])) == D("1.00")
    assert D(str(detail["current_usage"])) == D("0.99")
    assert D(str(detail["reserved"])) == 0
    assert D(str(detail["requested"])) == D("0.05")
    assert D(str(detail["remaining"])) == D("0.01")
    assert detail["reset_at"] is not None
    assert count(seeded_conn, "quota_reservations") == 0
    assert count(seeded_conn, "usage_quotas", "reserved <> 0") == 0
    assert balance(seeded_conn, qid) == (D("0.99"), 0)
    # One cent still fits.
    assert reserve(seeded_conn, SEED_ORG, "seed-1c", "0.01", model="gpt-4")["status"] == "reserved"


# ---------------------------------------------------------------- reserve and record


def test_reserve_then_record_replaces_the_hold_by_the_actual_cost(conn: Conn) -> None:
    """The estimate is held, then settled: reserved back to 0, usage = priced actual cost."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    res = reserve(conn, org, "call-1", "0.10")
    assert (res["status"], res["reserved_cost"]) == ("reserved", D("0.10"))
    assert balance(conn, qid) == (0, D("0.10"))
    out = record(conn, org, "call-1")
    assert (out["cost_usd"], out["credits"], out["duplicate"]) == (
        GPT4O_1000_100,
        GPT4O_1000_100 * 1000,
        False,
    )
    assert balance(conn, qid) == (GPT4O_1000_100, 0)
    row = conn.execute(
        "select r.status, l.reservation_id = r.id from public.quota_reservations r"
        " join public.api_usage_logs l using (organization_id, request_id)"
    ).fetchone()
    assert row == ("settled", True)
    # Reserving the same request again after it was recorded changes nothing.
    again = reserve(conn, org, "call-1", "0.10")
    assert (again["status"], again["log_id"]) == ("recorded", out["log_id"])
    assert balance(conn, qid) == (GPT4O_1000_100, 0)


def test_reserve_commits_asynchronously_and_a_settle_in_its_transaction_stays_durable(
    conn: Conn,
) -> None:
    """reserve_quota turns synchronous_commit off for its own transaction only; a
    record_usage in the same transaction turns the caller's setting back on."""

    def setting() -> str:
        row = conn.execute("select current_setting('synchronous_commit')").fetchone()
        assert row is not None
        return str(row[0])

    org = make_org(conn)
    add_quota(conn, org, 1)
    assert setting() == "on"
    with conn.transaction():
        reserve(conn, org, "call-a", "0.10")
        assert setting() == "off"
    assert setting() == "on"
    with conn.transaction():
        reserve(conn, org, "call-b", "0.10")
        record(conn, org, "call-b")
        assert setting() == "on"
    with conn.transaction():
        record(conn, org, "call-c")
        assert setting() == "on"


def test_reserve_without_estimate_prices_prompt_plus_max_output(conn: Conn) -> None:
    """No estimated_cost: the hold is input_tokens + max_output_tokens at list price."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    res = reserve(conn, org, "call-est", input_tokens=1000, max_output_tokens=100)
    assert (res["reserved_cost"], res["reserved_tokens"]) == (GPT4O_1000_100, 1100)
    assert balance(conn, qid) == (0, GPT4O_1000_100)


def test_track_only_record_charges_every_applicable_quota(conn: Conn) -> None:
    """record_usage without a reservation still logs the call and charges the quotas."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    out = record(
        conn,
        org,
        "track-only",
        user_id="u1",
        latency_ms=120,
        finish_reason="stop",
        tags=["a", "b"],
        metadata=json.dumps({"k": "v"}),
        session_id="s1",
    )
    assert out["cost_usd"] == GPT4O_1000_100
    assert balance(conn, qid) == (GPT4O_1000_100, 0)
    row = conn.execute(
        "select reservation_id, user_id, session_id, latency_ms, finish_reason, tags,"
        " metadata ->> 'k', total_tokens, success from public.api_usage_logs"
    ).fetchone()
    assert row == (None, "u1", "s1", 120, "stop", ["a", "b"], "v", 1100, True)


def test_record_usage_replayed_three_times_is_one_row_charged_once(conn: Conn) -> None:
    """The same event three times: one log row, charged once, replays say duplicate=true."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "replayed", "0.10")
    results = [record(conn, org, "replayed") for _ in range(3)]
    assert [r["duplicate"] for r in results] == [False, True, True]
    assert {(r["log_id"], r["cost_usd"], r["price_id"]) for r in results} == {
        (results[0]["log_id"], GPT4O_1000_100, results[0]["price_id"])
    }
    assert count(conn, "api_usage_logs") == 1
    assert balance(conn, qid) == (GPT4O_1000_100, 0)


def test_same_request_id_with_different_tokens_is_qf003_and_changes_nothing(conn: Conn) -> None:
    """A different event under a used request_id is a conflict (QF003) naming the fields."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    first = record(conn, org, "dup-id")
    with pytest.raises(psycopg.Error) as exc:
        record(conn, org, "dup-id", output_tokens=5000)
    assert exc.value.sqlstate == "QF003"
    detail = json.loads(exc.value.diag.message_detail or "{}")
    assert detail["fields"] == ["output_tokens"]
    assert detail["log_id"] == str(first["log_id"])
    assert count(conn, "api_usage_logs") == 1
    assert balance(conn, qid) == (GPT4O_1000_100, 0)
    row = conn.execute("select output_tokens, cost_usd from public.api_usage_logs").fetchone()
    assert row == (100, GPT4O_1000_100)


def test_reserving_the_same_request_twice_holds_once(conn: Conn) -> None:
    """A retried reserve_quota returns the pending reservation; the quota holds one estimate."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    first = reserve(conn, org, "twice", "0.10")
    second = reserve(conn, org, "twice", "0.10")
    assert (second["status"], second["reservation_id"]) == ("pending", first["reservation_id"])
    assert second["expires_at"] == first["expires_at"]
    assert balance(conn, qid) == (0, D("0.10"))
    assert count(conn, "quota_reservations") == 1


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"provider": "anthropic", "model": "claude-sonnet-4-5"}, ["provider", "model"]),
        ({"model": "gpt-4o-mini"}, ["model"]),
        ({"user_id": "someone-else"}, ["user_id"]),
    ],
)
@pytest.mark.parametrize("state", ["reserved", "recorded"])
def test_a_request_id_reused_for_another_call_is_qf003_and_changes_nothing(
    conn: Conn, state: str, change: dict[str, Any], fields: list[str]
) -> None:
    """reserve_quota with a request_id held or recorded for another provider, model or user
    raises QF003 naming the fields, instead of answering with that call's hold or result."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "shared-id", "0.10", user_id="admin")
    if state == "recorded":
        record(conn, org, "shared-id", user_id="admin")
    before = balance(conn, qid)
    with pytest.raises(psycopg.Error) as exc:
        reserve(conn, org, "shared-id", "0.10", **{"user_id": "admin", **change})
    assert exc.value.sqlstate == "QF003"
    assert json.loads(exc.value.diag.message_detail or "{}")["fields"] == fields
    assert f"already {state}" in str(exc.value)
    assert balance(conn, qid) == before
    assert count(conn, "quota_reservations") == 1
    # The same call again is still a retry, not a conflict.
    again = reserve(conn, org, "shared-id", "0.10", user_id="admin")
    assert again["status"] == ("pending" if state == "reserved" else "recorded")


def test_failed_call_releases_the_hold_and_writes_a_row(conn: Conn) -> None:
    """success=false: a log row with the error, the hold released, only real usage charged."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "failed", "0.10")
    out = record(
        conn,
        org,
        "failed",
        input_tokens=0,
        output_tokens=0,
        success=False,
        error_code="rate_limit",
        error_message="429 Too Many Requests",
    )
    assert out["cost_usd"] == 0
    assert balance(conn, qid) == (0, 0)
    row = conn.execute(
        "select success, error_code, error_message, cost_usd from public.api_usage_logs"
    ).fetchone()
    assert row == (False, "rate_limit", "429 Too Many Requests", 0)
    assert count(conn, "quota_reservations", "status = 'settled'") == 1
    # A failed call of an unpriced model that used nothing is logged at $0, not refused.
    out = record(
        conn,
        org,
        "failed-unpriced",
        model="no-such-model",
        input_tokens=0,
        output_tokens=0,
        success=False,
    )
    assert (out["cost_usd"], out["price_id"]) == (0, None)
    # A failed call that did use tokens is charged for them.
    out = record(conn, org, "failed-partial", success=False)
    assert out["cost_usd"] == GPT4O_1000_100
    assert balance(conn, qid) == (GPT4O_1000_100, 0)


def test_soft_quota_admits_and_flags_while_hard_quota_refuses(conn: Conn) -> None:
    """Beyond a soft limit the call is admitted and the quota id returned; hard refuses."""
    org = make_org(conn)
    soft = add_quota(conn, org, "0.05", enforcement="soft")
    res = reserve(conn, org, "soft-1", "0.10")
    assert (res["status"], res["soft_exceeded_quota_ids"]) == ("reserved", [soft])
    assert balance(conn, soft) == (0, D("0.10"))
    hard = add_quota(conn, org, "0.09")  # holds nothing yet: 0.10 does not fit
    with pytest.raises(psycopg.Error) as exc:
        reserve(conn, org, "soft-2", "0.10")
    assert exc.value.sqlstate == "QF001"
    assert json.loads(exc.value.diag.message_detail or "{}")["quota_id"] == str(hard)
    assert balance(conn, soft) == (0, D("0.10"))
    assert balance(conn, hard) == (0, 0)


def test_tokens_and_requests_quotas_count_tokens_and_calls(conn: Conn) -> None:
    """A tokens quota holds prompt+max output and charges input+output; requests counts 1."""
    org = make_org(conn)
    toks = add_quota(conn, org, 5000, metric="tokens")
    reqs = add_quota(conn, org, 2, metric="requests")
    reserve(conn, org, "t1", input_tokens=1000, max_output_tokens=2000)
    assert balance(conn, toks) == (0, 3000)
    assert balance(conn, reqs) == (0, 1)
    record(conn, org, "t1", input_tokens=1000, output_tokens=400)
    assert balance(conn, toks) == (1400, 0)
    assert balance(conn, reqs) == (1, 0)
    with pytest.raises(psycopg.Error) as exc:  # 1400 + 1000 + 3000 > 5000
        reserve(conn, org, "t2", input_tokens=1000, max_output_tokens=3000)
    assert exc.value.sqlstate == "QF001"
    assert json.loads(exc.value.diag.message_detail or "{}")["metric"] == "tokens"
    reserve(conn, org, "t3", input_tokens=100, max_output_tokens=100)
    with pytest.raises(psycopg.Error) as exc:  # third request in the window
        reserve(conn, org, "t4", input_tokens=10, max_output_tokens=10)
    assert exc.value.sqlstate == "QF001"
    assert json.loads(exc.value.diag.message_detail or "{}")["quota_id"] == str(reqs)
    assert balance(conn, reqs) == (1, 1)


def test_user_provider_and_model_quotas_apply_only_to_their_calls(conn: Conn) -> None:
    """Scoped quotas: per user, per provider, per model (gpt-4o covers its snapshots, not
    gpt-4o-mini); the organization-wide quota sees everything."""
    org = make_org(conn)
    org_q = add_quota(conn, org, 100)
    alice_q = add_quota(conn, org, 100, user_id="alice")
    openai_q = add_quota(conn, org, 100, provider="openai")
    gpt4o_q = add_quota(conn, org, 100, model="gpt-4o")
    snapshot_q = add_quota(conn, org, 100, model="gpt-4o-2024-08-06")
    calls = [
        ("c1", "alice", "openai", "gpt-4o-2024-08-06", "0.01"),
        ("c2", "bob", "openai", "gpt-4o-mini-2024-07-18", "0.02"),
        ("c3", "alice", "anthropic", "claude-sonnet-4-5-20250929", "0.04"),
        ("c4", None, "openai", "gpt-4o", "0.08"),
    ]
    for rid, user, provider, model, cost in calls:
        reserve(conn, org, rid, cost, user_id=user, provider=provider, model=model)
    expected = {
        org_q: D("0.15"),
        alice_q: D("0.05"),
        openai_q: D("0.11"),
        gpt4o_q: D("0.09"),
        snapshot_q: D("0.01"),
    }
    assert {q: balance(conn, q)[1] for q in expected} == expected
    # Settling charges the same scopes with the actual costs.
    actual = {}
    for rid, user, provider, model, _ in calls:
        actual[rid] = record(conn, org, rid, user_id=user, provider=provider, model=model)[
            "cost_usd"
        ]
    assert {q: balance(conn, q) for q in expected} == {
        org_q: (sum(actual.values()), 0),
        alice_q: (actual["c1"] + actual["c3"], 0),
        openai_q: (actual["c1"] + actual["c2"] + actual["c4"], 0),
        gpt4o_q: (actual["c1"] + actual["c4"], 0),
        snapshot_q: (actual["c1"], 0),
    }
    # check_quota lists the same applicable quotas for a snapshot name.
    ids = {
        r[0]
        for r in conn.execute(
            "select quota_id from public.check_quota(%s, 'openai', 'gpt-4o-2024-08-06', 0,"
            " 'alice')",
            (org,),
        ).fetchall()
    }
    assert ids == {org_q, alice_q, openai_q, gpt4o_q, snapshot_q}


# ---------------------------------------------------------------- expiry and release


def _expire_now(conn: Conn, rid: str) -> None:
    conn.execute(
        "update public.quota_reservations set expires_at = now() - interval '1 second'"
        " where request_id = %s",
        (rid,),
    )


def test_re_reserving_an_expired_request_replaces_its_hold(conn: Conn) -> None:
    """A request whose pending hold expired (not yet swept) reserved again holds only the
    new estimate: the old hold is freed, not leaked."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "again", "0.10")
    _expire_now(conn, "again")
    again = reserve(conn, org, "again", "0.20")
    assert again["status"] == "reserved"
    assert balance(conn, qid) == (0, D("0.20"))
    assert count(conn, "quota_reservations") == 1


def test_expired_reservation_is_freed_by_expire_reservations(conn: Conn) -> None:
    """expire_reservations() frees holds past their expiry and leaves live ones alone."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "stale", "0.30")
    reserve(conn, org, "live", "0.20")
    _expire_now(conn, "stale")
    assert conn.execute("select public.expire_reservations()").fetchone() == (1,)
    assert balance(conn, qid) == (0, D("0.20"))
    statuses = dict(conn.execute("select request_id, status from public.quota_reservations"))
    assert statuses == {"stale": "expired", "live": "pending"}
    assert conn.execute("select public.expire_reservations(%s)", (org,)).fetchone() == (0,)
    # get_quota_status already showed it freed before anyone wrote (read-only view).
    _expire_now(conn, "live")
    row = conn.execute(
        "select reserved, remaining from public.get_quota_status(%s)", (org,)
    ).fetchone()
    assert row == (0, D(1))
    assert balance(conn, qid) == (0, D("0.20"))


def test_expired_reservation_is_freed_lazily_by_the_next_reserve(conn: Conn) -> None:
    """A stale hold that would block the next call is freed by that call's reserve_quota."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "stale", "0.90")
    with pytest.raises(psycopg.Error) as exc:
        reserve(conn, org, "blocked", "0.50")
    assert exc.value.sqlstate == "QF001"
    _expire_now(conn, "stale")
    assert reserve(conn, org, "next", "0.50")["status"] == "reserved"
    assert balance(conn, qid) == (0, D("0.50"))
    statuses = dict(conn.execute("select request_id, status from public.quota_reservations"))
    assert statuses == {"stale": "expired", "next": "pending"}
    # Re-reserving an expired request id makes a fresh hold.
    _expire_now(conn, "next")
    again = reserve(conn, org, "next", "0.40")
    assert again["status"] == "reserved"
    assert balance(conn, qid) == (0, D("0.40"))


def test_late_settle_after_expiry_records_and_charges_once(conn: Conn) -> None:
    """The hold expired and was freed; the late record_usage still logs and charges once."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "late", "0.10")
    _expire_now(conn, "late")
    conn.execute("select public.expire_reservations()")
    assert balance(conn, qid) == (0, 0)
    out = record(conn, org, "late")
    assert out["duplicate"] is False
    assert balance(conn, qid) == (GPT4O_1000_100, 0)
    assert record(conn, org, "late")["duplicate"] is True
    assert conn.execute("select public.expire_reservations()").fetchone() == (0,)
    assert balance(conn, qid) == (GPT4O_1000_100, 0)
    assert count(conn, "api_usage_logs") == 1


def test_settle_of_an_expired_but_unswept_hold_releases_it_once(conn: Conn) -> None:
    """Expired but not yet swept: record_usage releases the hold; a later sweep adds nothing."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "late2", "0.10")
    _expire_now(conn, "late2")
    record(conn, org, "late2")
    assert conn.execute("select public.expire_reservations()").fetchone() == (0,)
    assert balance(conn, qid) == (GPT4O_1000_100, 0)


def test_release_reservation_frees_the_hold_without_usage(conn: Conn) -> None:
    """release_reservation: hold freed, status released, no log row; a second call is false."""
    org = make_org(conn)
    qid = add_quota(conn, org, 1)
    reserve(conn, org, "cancelled", "0.40")
    assert conn.execute(
        "select public.release_reservation(%s, 'cancelled')", (org,)
    ).fetchone() == (True,)
    assert balance(conn, qid) == (0, 0)
    assert conn.execute(
        "select public.release_reservation(%s, 'cancelled')", (org,)
    ).fetchone() == (False,)
    assert conn.execute(
        "select public.release_reservation(%s, 'never-made')", (org,)
    ).fetchone() == (False,)
    assert count(conn, "quota_reservations", "status = 'released'") == 1
    assert count(conn, "api_usage_logs") == 0


def test_get_quota_status_reports_limit_usage_remaining_percent_and_window(conn: Conn) -> None:
    """Every quota with limit, usage, reserved, remaining, percent used, window and reset."""
    org = make_org(conn, time_zone="Europe/Berlin")
    qid = add_quota(conn, org, 2, name="daily spend")
    add_quota(conn, org, 1000, metric="requests", quota_type="monthly")
    record(conn, org, "s1", input_tokens=100_000, output_tokens=25_000)  # $0.50
    reserve(conn, org, "s2", "0.30")
    rows = (
        conn.cursor(row_factory=dict_row)
        .execute("select * from public.get_quota_status(%s)", (org,))
        .fetchall()
    )
    assert len(rows) == 2
    daily = next(r for r in rows if r["quota_id"] == qid)
    assert daily["name"] == "daily spend"
    assert (daily["quota_limit"], daily["current_usage"], daily["reserved"]) == (
        D(2),
        D("0.5"),
        D("0.30"),
    )
    assert (daily["remaining"], daily["percent_used"]) == (D("1.20"), D("25.00"))
    assert daily["time_zone"] == "Europe/Berlin"
    q = quota(conn, qid)
    assert (daily["window_start"], daily["reset_at"]) == (q["window_start"], q["reset_at"])
    monthly = next(r for r in rows if r["quota_id"] != qid)
    assert (monthly["current_usage"], monthly["reserved"], monthly["remaining"]) == (1, 1, 998)
    assert monthly["percent_used"] == D("0.10")
