"""The HTTP functions through ``functions_framework.create_app(target, source).test_client()``:
every target's success path, the authentication matrix, bad bodies, and each error status
with the fields a client needs — against a real database and the fake provider."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from quotaflow.errors import (
    AuthorizationError,
    BackendUnavailableError,
    IdempotencyConflictError,
    PricingNotFoundError,
    ProviderError,
    QuotaExceededError,
    TrackingError,
    ValidationError,
)
from quotaflow.server.auth import (
    AuthenticationError,
    UnknownOrganizationError,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from quotaflow.testing import FakeProviderServer

from tests.db import act_as
from tests.functions_support import (
    GPT4O_COST,
    JWT_SECRET,
    REPLY,
    USAGE,
    Api,
    Conn,
    JwksServer,
    World,
    add_quota,
    api,
    bare_api,
    error_of,
    event_body,
    execute_body,
    fake,
    jwks,
    log_rows,
    quota_row,
    quotaflow_http,
    user_jwt,
    world,
)

__all__ = ["api", "bare_api", "fake", "jwks", "world"]  # fixtures

# ---------------------------------------------------------------------------------------
# Success paths
# ---------------------------------------------------------------------------------------


def test_health_reports_the_database_without_credentials(api: Api) -> None:
    r = api.get("health", as_=None)
    assert r.status_code == 200
    assert r.get_json()["status"] == "ok" and r.get_json()["database"] == "ok"


def test_openapi_document_describes_every_target_with_errors_and_bearer_auth(bare_api: Api) -> None:
    r = bare_api.get("openapi", as_=None)
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"] == "3.1.0"
    assert {
        "/estimate",
        "/track",
        "/execute",
        "/quota_status",
        "/usage_stats",
        "/health",
        "/reserve",
        "/release",
        "/check_quota",
        "/records",
    } <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    execute = doc["paths"]["/execute"]["post"]
    assert {"200", "400", "401", "403", "413", "422", "429", "502"} <= set(execute["responses"])
    assert "text/event-stream" in execute["responses"]["200"]["content"]
    assert set(doc["paths"]["/usage_stats"]) == {"get", "post"}
    assert doc["paths"]["/health"]["get"]["security"] == []
    params = {p["name"] for p in doc["paths"]["/usage_stats"]["get"]["parameters"]}
    assert {"type", "organization_id", "user_id", "start_date", "end_date", "days"} <= params
    assert "ErrorBody" in doc["components"]["schemas"]
    # Valid against the OpenAPI 3.1 meta-schema (the copy schemathesis ships).
    import jsonschema_rs
    from schemathesis.specs.openapi.definitions import OPENAPI_31

    errors = [str(e) for e in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(doc)]
    assert errors == []


def test_estimate_prices_tokens_from_cost_estimates(api: Api) -> None:
    r = api.post(
        "estimate",
        {"provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100},
        as_="member",
    )
    assert r.status_code == 200, r.get_json()
    assert Decimal(r.get_json()["estimated_cost"]) == GPT4O_COST


def test_estimate_counts_the_tokens_of_messages(api: Api) -> None:
    r = api.post(
        "estimate",
        {
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "Hello there! " * 50}],
            "output_tokens": 10,
        },
        as_="key",
    )
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["input_tokens"] > 50 and Decimal(body["estimated_cost"]) > 0


def test_execute_calls_the_provider_and_records_the_call_as_the_member(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    r = api.post("execute", execute_body(api.world.org, request_id="exec-1"), as_="member")
    body = r.get_json()
    assert r.status_code == 200, body
    assert body["content"] == REPLY
    assert body["usage"]["input_tokens"] == USAGE.input_tokens
    assert Decimal(body["cost"]) == GPT4O_COST and body["request_id"] == "exec-1"
    (row,) = log_rows(conn, api.world.org)
    assert row["user_id"] == str(api.world.member) and row["cost_usd"] == GPT4O_COST
    assert fake.request_count("chat.completions") == 1


def test_execute_with_an_api_key_keeps_the_apps_own_user_id(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    r = api.post("execute", execute_body(api.world.org, user_id="app-user-7"), as_="key")
    assert r.status_code == 200, r.get_json()
    assert log_rows(conn, api.world.org)[0]["user_id"] == "app-user-7"


def test_a_member_may_not_execute_as_another_user_but_an_admin_may(
    api: Api, fake: FakeProviderServer
) -> None:
    r = api.post("execute", execute_body(api.world.org, user_id="someone-else"), as_="member")
    assert r.status_code == 403 and error_of(r)["code"] == "forbidden"
    r = api.post("execute", execute_body(api.world.org, user_id="someone-else"), as_="admin")
    assert r.status_code == 200


def test_execute_refused_by_a_quota_is_429_with_its_figures_and_never_reaches_the_provider(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    quota = add_quota(conn, api.world.org, "0.001", metric="usd", quota_type="daily")
    r = api.post("execute", execute_body(api.world.org), as_="member")
    assert r.status_code == 429
    err = error_of(r)
    assert err["code"] == "quota_exceeded" and err["quota_id"] == quota
    assert err["quota_type"] == "daily" and Decimal(err["quota_limit"]) == Decimal("0.001")
    assert Decimal(err["current_usage"]) == 0 and Decimal(err["remaining"]) == Decimal("0.001")
    # The call needs more than the whole $0.001: no Retry-After (issue 13 item 9).
    assert err["reset_at"] and err["exceeds_limit"] is True and "Retry-After" not in r.headers
    assert fake.request_count() == 0
    assert quota_row(conn, quota)["reserved"] == 0


def test_a_request_id_reused_by_another_user_or_model_is_409_not_their_result(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    """An admin's executed call, then a member's execute with the same request_id but another
    provider and model: 409 naming the fields, no call made, the admin's row untouched."""
    first = api.post("execute", execute_body(api.world.org, request_id="shared"), as_="admin")
    assert first.status_code == 200, first.get_json()
    other = execute_body(api.world.org, request_id="shared")
    other["request"] |= {"provider": "anthropic", "model": "claude-sonnet-4-5"}
    r = api.post("execute", other, as_="member")
    assert r.status_code == 409
    err = error_of(r)
    assert err["code"] == "idempotency_conflict" and "request_id" in err["message"]
    assert "admin" not in r.get_data(as_text=True) and REPLY not in r.get_data(as_text=True)
    assert fake.request_count() == 1
    (row,) = log_rows(conn, api.world.org)
    assert row["user_id"] == str(api.world.admin) and row["provider"] == "openai"
    # The admin retrying the very same call still gets its own result back.
    again = api.post("execute", execute_body(api.world.org, request_id="shared"), as_="admin")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True


def test_a_member_cannot_exceed_a_hard_quota_through_n_in_extra(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    """extra.n = 128 multiplies the output the reservation must hold: the call needs 128 x 200
    output tokens ($0.256 of gpt-4o), more than the member's daily $0.10: refused, never sent."""
    quota = add_quota(conn, api.world.org, "0.10", metric="usd", quota_type="daily")
    body = execute_body(api.world.org)
    body["request"]["extra"] = {"n": 128}
    r = api.post("execute", body, as_="member")
    assert r.status_code == 429 and error_of(r)["quota_id"] == quota
    assert fake.request_count() == 0 and quota_row(conn, quota)["reserved"] == 0
    body["request"]["extra"] = {"n": 2}  # 2 x 200 tokens of gpt-4o fit
    assert api.post("execute", body, as_="member").status_code == 200
    body["request"]["extra"] = {"best_of": 3}
    r = api.post("execute", body, as_="member")
    assert r.status_code == 400 and error_of(r)["field"] == "extra.best_of"


def test_provider_failure_is_502_with_the_providers_status_and_is_recorded(
    api: Api, fake: FakeProviderServer, conn: Conn
) -> None:
    fake.fail_next(400, message="bad prompt")
    r = api.post("execute", execute_body(api.world.org, request_id="fails"), as_="key")
    assert r.status_code == 502
    err = error_of(r)
    assert err["code"] == "provider_error" and err["status"] == 400 and err["provider"] == "openai"
    (row,) = log_rows(conn, api.world.org)
    assert row["success"] is False and row["error_code"] == "http_400"


def test_track_records_an_event_once_and_refuses_a_changed_replay(api: Api, conn: Conn) -> None:
    first = api.post("track", event_body(api.world.org), as_="key")
    assert first.status_code == 200, first.get_json()
    assert Decimal(first.get_json()["cost_usd"]) == GPT4O_COST
    assert first.get_json()["duplicate"] is False
    again = api.post("track", event_body(api.world.org), as_="key")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    changed = api.post("track", event_body(api.world.org, usage={"input_tokens": 5}), as_="key")
    assert changed.status_code == 409 and error_of(changed)["code"] == "idempotency_conflict"
    assert len(log_rows(conn, api.world.org)) == 1


def test_track_accepts_a_raw_provider_response(api: Api, conn: Conn) -> None:
    raw = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
    }
    r = api.post(
        "track",
        {
            "organization_id": api.world.org,
            "request_id": "raw-1",
            "provider": "openai",
            "model": "gpt-4o",
            "response": raw,
            "user_id": "u1",
        },
        as_="service",
    )
    assert r.status_code == 200, r.get_json()
    assert Decimal(r.get_json()["cost_usd"]) == GPT4O_COST
    (row,) = log_rows(conn, api.world.org)
    assert (row["input_tokens"], row["output_tokens"], row["finish_reason"]) == (1000, 100, "stop")


def test_track_batch_records_every_event_and_reports_each_failure(api: Api, conn: Conn) -> None:
    events = [event_body(api.world.org, f"b-{i}") for i in range(3)]
    r = api.post("track", {"events": events}, as_="key")
    assert r.status_code == 200, r.get_json()
    assert [x["duplicate"] for x in r.get_json()["results"]] == [False, False, False]
    mixed = [
        event_body(api.world.org, "b-3"),
        event_body(api.world.org, "b-4", model="no-such"),
        event_body(api.world.org, "b-0", usage={"input_tokens": 1}),
        event_body(api.world.org, "b-1"),
    ]
    r = api.post("track", {"events": mixed}, as_="key")
    assert r.status_code == 200, r.get_json()
    first, unpriced, conflict, replay = r.get_json()["results"]
    assert Decimal(first["cost_usd"]) == GPT4O_COST
    # An unknown model's usage is kept, unpriced; a changed replay is refused on its own.
    assert unpriced["unpriced"] is True and Decimal(unpriced["cost_usd"]) == 0
    assert conflict["error"]["code"] == "idempotency_conflict"
    assert replay["duplicate"] is True
    assert len(log_rows(conn, api.world.org)) == 5


def test_track_needs_an_admin_when_called_with_a_user_jwt(api: Api) -> None:
    assert api.post("track", event_body(api.world.org), as_="member").status_code == 403
    assert api.post("track", event_body(api.world.org), as_="admin").status_code == 200


def test_reserve_and_release_hold_and_free_a_quota(api: Api, conn: Conn) -> None:
    quota = add_quota(conn, api.world.org, 10, metric="usd")
    body = {
        "organization_id": api.world.org,
        "request_id": "r-1",
        "provider": "openai",
        "model": "gpt-4o",
        "input_tokens": 1000,
        "max_output_tokens": 100,
    }
    r = api.post("reserve", body, as_="key")
    assert r.status_code == 200, r.get_json()
    assert (
        r.get_json()["status"] == "reserved"
        and Decimal(r.get_json()["reserved_cost"]) == GPT4O_COST
    )
    assert quota_row(conn, quota)["reserved"] == GPT4O_COST
    released = {"organization_id": api.world.org, "request_id": "r-1"}
    assert api.post("release", released, as_="key").get_json() == {"released": True}
    assert api.post("release", released, as_="key").get_json() == {"released": False}
    assert quota_row(conn, quota)["reserved"] == 0


def test_check_quota_and_quota_status_show_the_organizations_quotas(api: Api, conn: Conn) -> None:
    quota = add_quota(conn, api.world.org, 1, metric="usd", name="Daily spend")
    r = api.post(
        "check_quota",
        {
            "organization_id": api.world.org,
            "provider": "openai",
            "model": "gpt-4o",
            "estimated_cost": "0.5",
        },
        as_="member",
    )
    assert r.status_code == 200, r.get_json()
    (check,) = r.get_json()["quotas"]
    assert check["allowed"] is True and check["quota_id"] == quota
    r = api.get("quota_status", as_="member", organization_id=api.world.org)
    assert r.status_code == 200, r.get_json()
    (status,) = r.get_json()["quotas"]
    assert status["quota_id"] == quota and Decimal(status["quota_limit"]) == 1


def test_records_returns_the_record_of_a_request_id(api: Api) -> None:
    api.post("track", event_body(api.world.org, "rec-1"), as_="key")
    r = api.get("records", as_="member", organization_id=api.world.org, request_id="rec-1")
    assert r.status_code == 200, r.get_json()
    (record,) = r.get_json()["records"]
    assert record["request_id"] == "rec-1" and Decimal(record["cost"]) == GPT4O_COST
    r = api.get("records", as_="member", organization_id=api.world.org, request_id="nope")
    assert r.get_json() == {"records": []}


# ---------------------------------------------------------------------------------------
# usage_stats
# ---------------------------------------------------------------------------------------


@pytest.fixture
def usage(api: Api) -> Api:
    """Four calls: two of user-a (gpt-4o, one failed), one of user-b (gpt-4o-mini), one of
    user-b on claude."""
    org = api.world.org
    events = [
        event_body(org, "s-1", user_id="user-a", latency_ms=100),
        event_body(org, "s-2", user_id="user-a", success=False, usage={}, latency_ms=300),
        event_body(org, "s-3", user_id="user-b", model="gpt-4o-mini", latency_ms=200),
        event_body(
            org,
            "s-4",
            user_id="user-b",
            provider="anthropic",
            model="claude-sonnet-4-5",
            latency_ms=400,
        ),
    ]
    r = api.post("track", {"events": events}, as_="service")
    assert r.status_code == 200, r.get_json()
    return api


def test_usage_stats_overview_totals_and_breakdowns(usage: Api) -> None:
    r = usage.get("usage_stats", as_="admin", type="overview", organization_id=usage.world.org)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["type"] == "overview"
    totals = body["data"]["totals"]
    assert (totals["requests"], totals["successful_requests"], totals["failed_requests"]) == (
        4,
        3,
        1,
    )
    assert totals["unique_users"] == 2 and Decimal(totals["success_rate"]) == Decimal("0.75")
    assert totals["display_currency"] == "USD"
    assert Decimal(totals["cost_display"]) == Decimal(totals["cost_usd"]) > 0
    assert {g["provider"] for g in body["data"]["by_provider"]} == {"openai", "anthropic"}
    assert len(body["data"]["daily"]) == 1


def test_usage_stats_bulk_as_in_seed_003(usage: Api) -> None:
    body = {
        "type": "bulk",
        "organizationId": usage.world.org,
        "filters": [
            {"type": "overview"},
            {"type": "trends", "days": 7},
            {"type": "user", "userId": "user-a"},
            {"type": "organization"},
            {"type": "model-performance"},
        ],
    }
    r = usage.post("usage_stats", body, as_="key")
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert [x["type"] for x in results] == [
        "overview",
        "trends",
        "user",
        "organization",
        "model-performance",
    ]
    trends = results[1]["data"]
    assert len(trends["points"]) == 7 and sum(p["requests"] for p in trends["points"]) == 4
    assert results[2]["data"]["totals"]["requests"] == 2
    assert {g["user_id"] for g in results[3]["data"]["by_user"]} == {"user-a", "user-b"}
    perf = {(m["provider"], m["model"]): m for m in results[4]["data"]["models"]}
    gpt4o = perf[("openai", "gpt-4o")]
    assert gpt4o["requests"] == 2 and Decimal(gpt4o["success_rate"]) == Decimal("0.5")
    assert Decimal(gpt4o["p50_latency_ms"]) == 200


def test_usage_stats_filters_by_date(usage: Api) -> None:
    r = usage.get(
        "usage_stats",
        as_="admin",
        organization_id=usage.world.org,
        start_date="2020-01-01",
        end_date="2020-01-31",
    )
    assert r.status_code == 200 and r.get_json()["data"]["totals"]["requests"] == 0
    r = usage.get(
        "usage_stats",
        as_="admin",
        organization_id=usage.world.org,
        start_date="2031-01-02",
        end_date="2031-01-01",
    )
    assert r.status_code == 400 and error_of(r)["field"] == "end_date"


def test_usage_stats_members_see_only_their_own_user_report(usage: Api) -> None:
    org = usage.world.org
    assert usage.get("usage_stats", as_="member", organization_id=org).status_code == 403
    own = usage.get(
        "usage_stats",
        as_="member",
        organization_id=org,
        type="user",
        user_id=str(usage.world.member),
    )
    assert own.status_code == 200
    other = usage.get(
        "usage_stats", as_="member", organization_id=org, type="user", user_id="user-a"
    )
    assert other.status_code == 403


# ---------------------------------------------------------------------------------------
# Authentication and authorization
# ---------------------------------------------------------------------------------------


AUTH_CASES = [
    ("no credential", None, 401),
    ("expired JWT", "expired", 401),
    ("wrong audience", "wrong_aud", 401),
    ("wrong signature", "wrong_sig", 401),
    ("anon role", "anon", 401),
    ("garbage", "not-a-token", 401),
    ("member of another organization", "stranger", 403),
    ("revoked API key", "revoked", 401),
    ("another organization's API key", "other_key", 403),
    ("service role", "service", 200),
    ("API key", "key", 200),
    ("member JWT (HS256)", "member", 200),
    ("member JWT (ES256 from the JWKS)", "jwks_member", 200),
]


def credential(api: Api, jwks: JwksServer, kind: str | None) -> str | None:
    w = api.world
    if kind in ("service", "key", "owner", "admin", "member", "stranger"):
        return w.token(kind)
    return {
        None: None,
        "expired": user_jwt(w.member, expires_in=-3600),
        "wrong_aud": user_jwt(w.member, aud="somebody-else"),
        "wrong_sig": user_jwt(w.member, secret="another-secret-of-at-least-thirty-two-chars"),
        "anon": user_jwt(w.member, role="anon"),
        "not-a-token": "not-a-token",
        "revoked": w.revoked_api_key,
        "other_key": w.other_api_key,
        "jwks_member": jwks.token(w.member),
    }.get(kind, kind)  # type: ignore[arg-type]


def test_auth_matrix_on_quota_status(api: Api, jwks: JwksServer) -> None:
    """Each credential on a read target: 401 for bad credentials (with WWW-Authenticate),
    403 for another organization's, 200 for the service role, the key and members."""
    for case, kind, status in AUTH_CASES:
        r = api.get("quota_status", as_=credential(api, jwks, kind), organization_id=api.world.org)
        assert r.status_code == status, (case, r.get_json())
        if status == 401:
            assert error_of(r)["code"] == "unauthorized", case
            assert "Bearer" in r.headers["WWW-Authenticate"], case
        if status == 403:
            assert error_of(r)["code"] == "forbidden", case


def test_auth_matrix_on_execute(api: Api, jwks: JwksServer, fake: FakeProviderServer) -> None:
    """The same credentials on the target that spends money."""
    for case, kind, status in AUTH_CASES:
        r = api.post("execute", execute_body(api.world.org), as_=credential(api, jwks, kind))
        assert r.status_code == status, (case, r.get_json())
    assert fake.request_count() == 4


def test_service_role_naming_an_unknown_organization_is_404(api: Api) -> None:
    r = api.get("quota_status", organization_id="00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and error_of(r)["code"] == "organization_not_found"


def test_jwks_keys_are_fetched_once_and_cached(api: Api, jwks: JwksServer) -> None:
    for _ in range(3):
        token = jwks.token(api.world.member)
        assert api.get("quota_status", as_=token, organization_id=api.world.org).status_code == 200
    assert jwks.requests == 1


# ---------------------------------------------------------------------------------------
# Bad requests
# ---------------------------------------------------------------------------------------


def test_invalid_bodies_are_400_with_every_field_named(bare_api: Api) -> None:
    r = bare_api.post(
        "reserve",
        {
            "organization_id": "not-a-uuid",
            "request_id": "",
            "provider": "openai",
            "input_tokens": -1,
        },
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "invalid_request"
    fields = {e["field"] for e in err["errors"]}
    assert {"organization_id", "request_id", "model", "input_tokens"} <= fields


def test_unknown_fields_are_refused(bare_api: Api) -> None:
    r = bare_api.post("estimate", {"provider": "openai", "model": "gpt-4o", "input_tokenz": 3})
    assert r.status_code == 400 and error_of(r)["errors"][0]["field"] == "input_tokenz"


MALFORMED = [
    ("syntax", b"{not json", "invalid_json"),
    ("empty", b"", "invalid_json"),
    ("array", b"[1, 2]", "invalid_json"),
    ("nan", b'{"provider": NaN}', "invalid_json"),
    ("not utf-8", b"\xff\xfe", "invalid_json"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    (
        "NUL",
        json.dumps({"provider": "openai\u0000", "model": "gpt-4o"}).encode(),
        "invalid_request",
    ),
    ("lone surrogate", b'{"provider": "\\ud800", "model": "gpt-4o"}', "invalid_request"),
    (
        "huge int",
        b'{"provider": "openai", "model": "gpt-4o", "input_tokens": 99999999999999999999999}',
        "invalid_request",
    ),
    (
        "infinity",
        b'{"provider": "openai", "model": "gpt-4o", "input_tokens": 1e999}',
        "invalid_request",
    ),
]


def test_malformed_bodies_are_400_never_500(bare_api: Api) -> None:
    for case, data, code in MALFORMED:
        r = bare_api.call(
            "POST", "estimate", data=data, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400, (case, r.get_json())
        assert error_of(r)["code"] == code, case


def test_unknown_model_is_422(api: Api) -> None:
    r = api.post("estimate", {"provider": "openai", "model": "gpt-17-ultra", "input_tokens": 1})
    assert r.status_code == 422
    err = error_of(r)
    assert err["code"] == "pricing_not_found" and err["model"] == "gpt-17-ultra"


def test_oversized_body_is_413(bare_api: Api) -> None:
    big = {
        "provider": "openai",
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "x" * (1 << 20)}],
    }
    r = bare_api.post("estimate", big)
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


def test_wrong_method_is_405_with_allow(bare_api: Api) -> None:
    r = bare_api.call("DELETE", "execute")
    assert r.status_code == 405 and "POST" in r.headers["Allow"]
    r = bare_api.call("POST", "quota_status", json_body={})
    assert r.status_code == 405 and r.headers["Allow"].startswith("GET")


def test_errors_map_to_statuses_in_one_place() -> None:
    """The exception tree → status table the targets share, with the headers clients use."""
    reset = datetime.now(timezone.utc) + timedelta(seconds=90)
    cases: list[tuple[Exception, int, str]] = [
        (AuthenticationError("no"), 401, "unauthorized"),
        (AuthorizationError("no"), 403, "forbidden"),
        (UnknownOrganizationError("x"), 404, "organization_not_found"),
        (QuotaExceededError("full", quota_type="daily", reset_at=reset), 429, "quota_exceeded"),
        (PricingNotFoundError("?", provider="openai", model="m"), 422, "pricing_not_found"),
        (IdempotencyConflictError("twice"), 409, "idempotency_conflict"),
        (ValidationError("bad", field="f"), 400, "invalid_request"),
        (
            ProviderError("down", provider="openai", status=503, retry_after=2),
            502,
            "provider_error",
        ),
        (BackendUnavailableError("db down"), 503, "backend_unavailable"),
        (TrackingError("db said no"), 500, "tracking_error"),
        (RuntimeError("bug"), 500, "internal_error"),
    ]
    for exc, status, code in cases:
        body, got, headers = quotaflow_http.error_reply(exc)
        assert (got, body["error"]["code"]) == (status, code), exc
    _, _, headers = quotaflow_http.error_reply(cases[3][0])
    assert 89 <= int(headers["Retry-After"]) <= 91
    body, _, headers = quotaflow_http.error_reply(cases[7][0])
    assert headers["Retry-After"] == "2" and body["error"]["status"] == 503
    assert quotaflow_http.error_reply(RuntimeError("secret"))[0]["error"]["message"] == (
        "internal error"
    )


def test_cors_preflight_is_answered(bare_api: Api) -> None:
    r = bare_api.call("OPTIONS", "execute", as_=None)
    assert r.status_code == 204
    assert "authorization" in r.headers["Access-Control-Allow-Headers"]


# ---------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------


def test_api_keys_are_stored_only_as_hashes_and_owners_read_only_metadata(
    world: World, conn: Conn
) -> None:
    key_id, key = create_api_key(conn, world.org, "ci")
    assert key.startswith("qf_") and len(key) == 46
    stored = conn.execute(
        "select key_hash, key_prefix from public.api_keys where id = %s", (key_id,)
    ).fetchone()
    assert stored == (hashlib.sha256(key.encode()).hexdigest(), key[:11])
    assert key not in json.dumps(
        [str(v) for r in conn.execute("select * from public.api_keys").fetchall() for v in r]
    )
    listed = {k.key_id: k for k in list_api_keys(conn, world.org)}
    assert listed[key_id].active and not listed[world.api_key_id].revoked_at
    with act_as(conn, "authenticated", sub=world.owner, rollback=True) as c:
        names = {r[0] for r in c.execute("select name from public.api_keys").fetchall()}
    assert names == {"backend", "old backend", "ci"}
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(conn, "authenticated", sub=world.owner, rollback=True) as c,
    ):
        c.execute("select key_hash from public.api_keys")
    with act_as(conn, "authenticated", sub=world.member, rollback=True) as c:
        assert c.execute("select count(*) from public.api_keys").fetchone() == (0,)
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(conn, "authenticated", sub=world.owner, rollback=True) as c,
    ):
        c.execute(
            "select public.create_api_key(%s, 'x', repeat('a', 64), 'qf_abcdefgh')", (world.org,)
        )


def test_a_revoked_key_stops_working_at_once(api: Api) -> None:
    key_id, key = create_api_key(api.world.db_url, api.world.org, "temp")
    assert api.get("quota_status", as_=key, organization_id=api.world.org).status_code == 200
    assert revoke_api_key(api.world.db_url, key_id, organization_id=api.world.org)
    assert not revoke_api_key(api.world.db_url, key_id)
    assert api.get("quota_status", as_=key, organization_id=api.world.org).status_code == 401


def test_service_role_check_uses_the_configured_key_not_any_jwt(api: Api) -> None:
    forged = user_jwt("00000000-0000-4000-8000-000000000001", role="service_role")
    assert api.get("quota_status", as_=forged, organization_id=api.world.org).status_code == 401
    signed_elsewhere = user_jwt(api.world.member, secret=JWT_SECRET + "x")
    assert (
        api.get("quota_status", as_=signed_elsewhere, organization_id=api.world.org).status_code
        == 401
    )
