"""The functions on a real server on loopback (``quotaflow.server.LocalServer``): supabase-py's
``functions.invoke``, the library's HttpBackend under a Tracker, server-sent events, chunked
uploads, and 32 concurrent calls against a quota that fits K of them."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import pytest
from quotaflow import (
    HttpBackend,
    IdempotencyConflictError,
    QuotaExceededError,
    Tracker,
    UsageEvent,
)
from quotaflow.models import RecordResult
from quotaflow.server import LocalServer
from quotaflow.testing import FakeProviderServer
from supabase_functions.errors import FunctionsHttpError

from supabase import ClientOptions, create_client
from tests.functions_support import (
    GPT4O_COST,
    REPLY,
    SERVICE_ROLE_KEY,
    USAGE,
    Conn,
    JwksServer,
    World,
    add_quota,
    fake,
    function_config,
    jwks,
    log_rows,
    quota_row,
    user_jwt,
    world,
)

__all__ = ["fake", "jwks", "world"]  # fixtures

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"


@pytest.fixture
def bare_server() -> Iterator[LocalServer]:
    """The functions with no database behind them: for what never reaches one."""
    with LocalServer(
        database_url=UNREACHABLE_DB, config={"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY}
    ) as s:
        yield s


OPENAI_KEY_IN_CONFIG = "sk-from-the-server-config"


@pytest.fixture
def server(world: World, jwks: JwksServer) -> Iterator[LocalServer]:
    """The functions on loopback; the OpenAI key comes from the server's config (the fake
    fixture's environment holds another)."""
    config = {**function_config(world.db_url, jwks.url), "OPENAI_API_KEY": OPENAI_KEY_IN_CONFIG}
    with LocalServer(database_url=world.db_url, config=config) as s:
        yield s


def supabase(url: str, key: str) -> Any:
    """supabase-py's client as an app makes it (own httpx client: no deprecated timeout)."""
    return create_client(url, key, options=ClientOptions(httpx_client=httpx.Client(timeout=10)))


def execute_body(org: str, *, stream: bool = False, **context: Any) -> dict[str, Any]:
    return {
        "request": {
            "provider": "openai",
            "model": "gpt-4o",
            "messages": MESSAGES,
            "max_tokens": 200,
            "stream": stream,
        },
        "context": {"organization_id": org, **context},
    }


def test_supabase_py_functions_invoke_round_trip(
    server: LocalServer, world: World, fake: FakeProviderServer, conn: Conn
) -> None:
    """create_client(url, key).functions.invoke works unchanged, with the service-role key
    and with a signed-in member's session token."""
    client = supabase(server.url, SERVICE_ROLE_KEY)
    data = client.functions.invoke(
        "execute",
        invoke_options={"body": execute_body(world.org, request_id="sb-1"), "responseType": "json"},
    )
    assert isinstance(data, dict)
    assert data["content"] == REPLY and Decimal(data["cost"]) == GPT4O_COST
    status = client.functions.invoke(
        f"quota_status?organization_id={world.org}",
        invoke_options={"method": "GET", "responseType": "json"},
    )
    assert status == {"quotas": []}

    member = supabase(server.url, SERVICE_ROLE_KEY)
    member.functions.set_auth(user_jwt(world.member))
    data = member.functions.invoke(
        "execute", invoke_options={"body": execute_body(world.org), "responseType": "json"}
    )
    assert isinstance(data, dict) and data["usage"]["output_tokens"] == USAGE.output_tokens
    stranger = supabase(server.url, SERVICE_ROLE_KEY)
    stranger.functions.set_auth(user_jwt(world.stranger))
    with pytest.raises(FunctionsHttpError) as refused:
        stranger.functions.invoke("execute", invoke_options={"body": execute_body(world.org)})
    assert refused.value.status == 403
    assert [r["user_id"] for r in log_rows(conn, world.org)] == [None, str(world.member)]


def test_http_backend_under_a_tracker_round_trip(
    server: LocalServer, world: World, fake: FakeProviderServer, conn: Conn
) -> None:
    """The library's Tracker with HttpBackend (an organization API key) against the served
    functions: execute, replay, quotas, estimate, batch settle, typed quota errors."""
    quota = add_quota(conn, world.org, 5, metric="usd", quota_type="monthly")
    with Tracker(backend=HttpBackend(server.url, world.api_key)) as tracker:
        context = {"organization_id": world.org, "request_id": "hb-1", "user_id": "app-user"}
        request = {"provider": "openai", "model": "gpt-4o", "messages": MESSAGES, "max_tokens": 200}
        response = tracker.execute_with_tracking(request, context)
        assert response.content == REPLY and response.cost == GPT4O_COST
        replay = tracker.execute_with_tracking(request, context)
        assert replay.duplicate and replay.cost == GPT4O_COST and fake.request_count() == 1

        (status,) = tracker.get_quota_status(world.org)
        assert status.quota_id == quota and status.current_usage == GPT4O_COST
        (check,) = tracker.check_quota(world.org, "openai", "gpt-4o", "4.999")
        assert check.allowed is False and check.remaining == Decimal(5) - GPT4O_COST
        assert tracker.estimate_cost("openai", "gpt-4o", MESSAGES, 100) > 0

        events = [
            UsageEvent(
                organization_id=world.org,
                request_id=f"batch-{i}",
                provider="openai",
                model="gpt-4o",
                usage=USAGE,
            )
            for i in range(3)
        ]
        unpriced = events[0].model_copy(update={"request_id": "batch-x", "model": "no-such"})
        more = USAGE.model_copy(update={"output_tokens": USAGE.output_tokens + 1})
        conflict = events[0].model_copy(update={"usage": more})
        results = tracker.backend.record_usage_batch([*events, unpriced, conflict])
        assert [r.cost_usd for r in results[:3]] == [GPT4O_COST] * 3  # type: ignore[union-attr]
        # An unknown model's usage is kept, unpriced; a changed replay is refused on its own.
        assert isinstance(results[3], RecordResult) and results[3].unpriced
        assert isinstance(results[4], IdempotencyConflictError)
        record = tracker.backend.get_record(world.org, "batch-2")
        assert record is not None and record.cost == GPT4O_COST

        with pytest.raises(QuotaExceededError) as exceeded:
            tracker.execute_with_tracking(
                {**request, "max_tokens": 2_000_000}, {"organization_id": world.org}
            )
        assert exceeded.value.quota_id == quota and exceeded.value.quota_limit == 5
        assert exceeded.value.reset_at is not None
    assert quota_row(conn, quota)["reserved"] == 0
    assert len(log_rows(conn, world.org)) == 5  # the call, three events, the unpriced one


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])


def test_execute_streams_server_sent_events_then_the_settled_usage(
    server: LocalServer, world: World, fake: FakeProviderServer, conn: Conn
) -> None:
    with httpx.stream(
        "POST",
        server.functions_url + "/execute",
        json=execute_body(world.org, stream=True, request_id="sse-1"),
        headers={"Authorization": f"Bearer {world.api_key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    deltas = [e["delta"] for e in events if "delta" in e]
    assert len(deltas) > 1 and "".join(deltas) == REPLY
    final = events[-1]
    assert final["done"] is True and final["content"] == REPLY
    assert final["usage"]["input_tokens"] == USAGE.input_tokens
    assert Decimal(final["cost"]) == GPT4O_COST
    (row,) = log_rows(conn, world.org)
    assert row["request_id"] == "sse-1" and row["cost_usd"] == GPT4O_COST
    sent = fake.last_request
    assert sent is not None and sent.headers["authorization"] == f"Bearer {OPENAI_KEY_IN_CONFIG}"

    # The provider drops the connection mid-stream: an error event, and the call is still
    # recorded with the tokens it used (estimated).
    fake.cut_next_stream(after_chunks=2)
    with httpx.stream(
        "POST",
        server.functions_url + "/execute",
        json=execute_body(world.org, stream=True, request_id="sse-cut"),
        headers={"Authorization": f"Bearer {world.api_key}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    assert [e["delta"] for e in events if "delta" in e] == ["The ", "quick "]
    assert events[-1]["error"]["code"] == "provider_error"
    cut = next(r for r in log_rows(conn, world.org) if r["request_id"] == "sse-cut")
    assert cut["usage_estimated"] is True and cut["output_tokens"] > 0


def test_a_stream_the_client_abandons_is_still_settled(
    server: LocalServer, world: World, fake: FakeProviderServer, conn: Conn
) -> None:
    fake.reply_text = " ".join(["word"] * 200)
    fake.chunk_delay = 0.01
    with httpx.stream(
        "POST",
        server.functions_url + "/execute",
        json=execute_body(world.org, stream=True, request_id="gone"),
        headers={"Authorization": f"Bearer {world.api_key}"},
        timeout=10,
    ) as response:
        first = next(sse_events(response))
        assert "delta" in first
    deadline = time.monotonic() + 10
    while not log_rows(conn, world.org) and time.monotonic() < deadline:
        time.sleep(0.05)
    (row,) = log_rows(conn, world.org)
    assert row["request_id"] == "gone" and row["output_tokens"] > 0


def test_a_chunked_upload_over_the_limit_is_413(bare_server: LocalServer) -> None:
    server = bare_server

    def body() -> Iterator[bytes]:
        yield b'{"provider": "openai", "model": "gpt-4o",'
        yield b' "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    r = httpx.post(
        server.functions_url + "/estimate",
        content=body(),
        headers={"Authorization": f"Bearer {SERVICE_ROLE_KEY}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert httpx.get(server.functions_url + "/openapi.json").status_code == 200


def test_openapi_servers_come_from_configuration_never_from_the_host_header(
    bare_server: LocalServer,
) -> None:
    """Issue 13: a forged Host used to become the document's server."""
    server = bare_server
    doc = httpx.get(server.functions_url + "/openapi.json", headers={"Host": "evil.test"}).json()
    assert doc["servers"] == [{"url": "/functions/v1"}]
    assert httpx.get(server.functions_url + "/nope").status_code == 404
    with LocalServer(config={"QUOTAFLOW_PUBLIC_URL": "https://abc.supabase.co/"}) as public:
        doc = httpx.get(public.functions_url + "/openapi", headers={"Host": "evil.test"}).json()
        assert doc["servers"] == [{"url": "https://abc.supabase.co/functions/v1"}]
    with LocalServer(config={"QUOTAFLOW_PUBLIC_URL": "abc.supabase.co"}) as broken:
        r = httpx.get(broken.functions_url + "/openapi")
        assert r.status_code == 500 and r.json()["error"]["code"] == "configuration_error"


def test_32_concurrent_executes_against_a_quota_that_fits_k_admit_exactly_k(
    server: LocalServer, world: World, fake: FakeProviderServer, conn: Conn
) -> None:
    k = 7
    quota = add_quota(conn, world.org, k, metric="requests", quota_type="daily")
    barrier = threading.Barrier(32)

    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as http:

        def one(i: int) -> int:
            body = execute_body(world.org, request_id=f"c-{i}", user_id=f"u-{i}")
            barrier.wait()
            r = http.post(
                server.functions_url + "/execute",
                json=body,
                headers={"Authorization": f"Bearer {world.api_key}"},
            )
            if r.status_code == 429:
                assert r.json()["error"]["quota_id"] == quota
            return r.status_code

        with ThreadPoolExecutor(32) as pool:
            statuses = Counter(pool.map(one, range(32)))
    assert statuses == {200: k, 429: 32 - k}
    assert fake.request_count() == k
    q = quota_row(conn, quota)
    assert (q["current_usage"], q["reserved"]) == (k, 0)
    assert len(log_rows(conn, world.org)) == k
