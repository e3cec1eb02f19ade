"""Fail fast on configuration, bounded waits on outages (issue 12 item 3)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from quotaflow import BackendUnavailableError, ConfigurationError, HttpBackend, Tracker
from quotaflow.backends import PostgresBackend
from quotaflow.testing import FakeProviderServer

from tests.functions_support import Api
from tests.provider_fixtures import API_KEYS, base_urls

# Nothing listens on port 1: connections are refused at once.
DOWN_URL = "postgresql://postgres@127.0.0.1:1/quotaflow_down"
REQUEST = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
}
ORG = "0000000a-0000-4000-8000-000000000001"


@pytest.mark.parametrize("url", ["not a url", "postgresql://u@h:notaport/db", "host=x port=five"])
def test_a_malformed_database_url_is_refused_when_the_tracker_is_made(url: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Tracker(database_url=url, outbox=False)
    assert "database URL" in str(exc.value)


def test_a_missing_database_is_a_configuration_error_on_first_use(
    db_url: str, tmp_path: Path
) -> None:
    """No pool left retrying for 10 s: the first call says the database does not exist."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    missing = psycopg.conninfo.make_conninfo(**{**info, "dbname": "quotaflow_no_such_db"})
    tracker = Tracker(database_url=missing, outbox=tmp_path / "o.db")
    with pytest.raises(ConfigurationError) as exc:
        tracker.check_quota(ORG, "openai", "gpt-4o-mini", "0.01")
    assert "does not exist" in str(exc.value) and "quotaflow_no_such_db" in str(exc.value)
    tracker.close()


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com", "https://"])
def test_a_malformed_functions_url_is_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigurationError):
        HttpBackend(url, "key")


def test_timeouts_come_from_arguments_the_url_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PostgresBackend(DOWN_URL).connect_timeout == 2.0
    assert PostgresBackend(DOWN_URL + "?connect_timeout=7").connect_timeout == 7.0
    assert PostgresBackend(DOWN_URL, connect_timeout=0.5).connect_timeout == 0.5
    monkeypatch.setenv("QUOTAFLOW_CONNECT_TIMEOUT", "3")
    monkeypatch.setenv("QUOTAFLOW_POOL_TIMEOUT", "4")
    backend = PostgresBackend(DOWN_URL)
    assert (backend.connect_timeout, backend._timeout) == (3.0, 4.0)
    monkeypatch.setenv("QUOTAFLOW_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="QUOTAFLOW_CONNECT_TIMEOUT"):
        PostgresBackend(DOWN_URL)


def test_with_the_database_down_calls_are_refused_within_the_connect_timeout_and_warn_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail-closed: each call refused at once (nothing listens), never after a pool wait;
    one warning for the outage, not one per call or per reconnect attempt."""
    caplog.set_level(logging.INFO)
    tracker = Tracker(database_url=DOWN_URL, outbox=tmp_path / "o.db")
    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(BackendUnavailableError):
            tracker.execute_with_tracking(REQUEST, {"organization_id": ORG})
    # Five refusals well inside one connect timeout (2 s); the pool used to wait 10 s each.
    assert time.monotonic() - started < 2.0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["quotaflow.backends"], [r.getMessage() for r in warnings]
    assert "unreachable" in warnings[0].getMessage()
    tracker.close(timeout=0)


def test_fail_open_with_the_database_down_costs_no_pool_wait(
    tmp_path: Path, fake: FakeProviderServer
) -> None:
    """fail_open: the call goes to the provider unreserved and its usage waits in the outbox;
    neither the reserve nor the settle waits on a pool (20 s per call before)."""
    from quotaflow.providers import ProviderClient

    providers = ProviderClient(api_keys=API_KEYS, base_urls=base_urls(fake))
    tracker = Tracker(
        database_url=DOWN_URL, providers=providers, fail_open=True, outbox=tmp_path / "o.db"
    )
    started = time.monotonic()
    response = tracker.execute_with_tracking(REQUEST, {"organization_id": ORG})
    assert time.monotonic() - started < 2.0
    assert response.cost is None and fake.request_count() == 1
    assert tracker._get_outbox().pending() == 1
    tracker.close(timeout=0)
    providers.close()


def test_health_with_the_database_down_is_a_quick_503() -> None:
    api = Api(None)
    started = time.monotonic()
    r = api.get("health", as_=None)
    assert r.status_code == 503
    assert time.monotonic() - started < 3.0
    body: dict[str, Any] = r.get_json()
    assert body["error"]["code"] == "backend_unavailable"


@pytest.fixture
def fake() -> Any:
    with FakeProviderServer() as server:
        yield server
