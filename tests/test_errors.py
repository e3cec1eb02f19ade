"""The exception tree: each class's HTTP status and SQLSTATE are the only source of the four
mappings (exception→HTTP, exception→SQLSTATE, SQLSTATE→exception, HTTP→exception)."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
from quotaflow import errors
from quotaflow.backends import translate_db_error, translate_http_error
from quotaflow.errors import ERROR_CLASSES, QuotaflowError
from quotaflow.server.http import error_reply, item_error

SAMPLES: dict[type[QuotaflowError], dict[str, Any]] = {
    errors.ValidationError: {"field": "model"},
    errors.UnknownOrganizationError: {},
    errors.QuotaExceededError: {
        "quota_id": "7d0c1a4e-3a52-4c43-9b7f-1f6a8a1c3b11",
        "quota_type": "daily",
        "metric": "usd",
        "quota_limit": Decimal("10.00"),
        "current_usage": Decimal("9.99"),
        "reserved": Decimal("0"),
        "remaining": Decimal("0.01"),
        "requested": Decimal("0.5"),
        "reset_at": datetime(2026, 11, 29, tzinfo=timezone.utc),
    },
    errors.PricingNotFoundError: {"provider": "openai", "model": "gpt-9"},
    errors.ProviderError: {"provider": "anthropic", "status": 529, "retryable": True},
}


def sample(cls: type[QuotaflowError]) -> QuotaflowError:
    if cls is errors.UnknownOrganizationError:
        return cls("00000000-0000-4000-8000-000000000001")
    return cls(f"a {cls.__name__}", **SAMPLES.get(cls, {}))


def fields(exc: QuotaflowError) -> dict[str, Any]:
    """What a caller reads from the error, except the message (5xx replies hide it)."""
    return {k: v for k, v in exc.to_dict().items() if k != "message"}


def test_every_class_has_its_own_code_and_sqlstate() -> None:
    assert len({c.code for c in ERROR_CLASSES}) == len(ERROR_CLASSES)
    assert len({c.sqlstate for c in ERROR_CLASSES}) == len(ERROR_CLASSES)
    public = {
        v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, QuotaflowError)
    }
    assert public == set(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_each_class_round_trips_through_http_and_sqlstate(cls: type[QuotaflowError]) -> None:
    exc = sample(cls)
    # exception → HTTP, then HTTP → exception (what HttpBackend does with the reply)
    body, status, _ = error_reply(exc)
    assert status == cls.http_status
    again = translate_http_error(httpx.Response(status, json=body))
    assert type(again) is cls and fields(again) == fields(exc)
    # exception → SQLSTATE (a failed batch item), then SQLSTATE → exception
    item = item_error(exc)
    assert item["sqlstate"] == cls.sqlstate
    rebuilt = errors.error_for_sqlstate(item["sqlstate"], item["message"], item)
    assert type(rebuilt) is cls and fields(rebuilt) == fields(exc)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_a_real_sql_error_maps_to_its_class(cls: type[QuotaflowError], conn: Any) -> None:
    """``raise ... using errcode`` in Postgres comes back as the class with that SQLSTATE."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            f"do $$ begin raise exception 'refused here' using errcode = '{cls.sqlstate}'; end $$"
        )
    assert type(translate_db_error(info.value)) is cls


def test_sqlstates_without_a_class_map_by_family() -> None:
    assert type(errors.error_for_sqlstate("23505", "dup")) is errors.ValidationError
    assert type(errors.error_for_sqlstate("57P01", "bye")) is errors.BackendUnavailableError
    assert type(errors.error_for_sqlstate("42P01", "no table")) is errors.TrackingError


def test_replies_from_a_proxy_without_a_body_map_by_status() -> None:
    def of(status: int) -> type[QuotaflowError]:
        return type(translate_http_error(httpx.Response(status, text="<html>")))

    assert of(404) is errors.ValidationError
    assert of(429) is errors.QuotaExceededError
    assert of(418) is errors.ValidationError
    assert of(502) is errors.BackendUnavailableError
    assert of(504) is errors.BackendUnavailableError
    assert of(500) is errors.TrackingError
