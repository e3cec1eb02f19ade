"""quotaflow: track, price and cap the AI API calls an application makes.

    from quotaflow import execute_with_tracking
    response = execute_with_tracking(
        {"provider": "openai", "model": "gpt-4o-mini",
         "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 200},
        {"organization_id": ORG_ID, "user_id": "user-123"},
    )
    print(response.content, response.cost, response.usage.total_tokens)

The module-level functions use a default :class:`Tracker` configured from the environment.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .backends import Backend, HttpBackend, PostgresBackend
from .errors import (
    AuthorizationError,
    BackendUnavailableError,
    ConfigurationError,
    IdempotencyConflictError,
    PricingNotFoundError,
    ProviderError,
    QuotaExceededError,
    QuotaflowError,
    TrackingError,
    ValidationError,
)
from .models import (
    AIModelRequest,
    AIModelResponse,
    ExecutionContext,
    QuotaCheck,
    QuotaStatus,
    Usage,
    UsageEvent,
    UsageRecord,
)
from .reports.analytics import AggregatedUsage, QuotaAlert, UsageFilters
from .tracker import (
    AsyncTrackedSdkManager,
    AsyncTrackedSdkStream,
    AsyncTrackedStream,
    AsyncTracker,
    TrackedSdkManager,
    TrackedSdkStream,
    TrackedStream,
    Tracker,
)
from .usage import extract_usage

__all__ = [
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
    "QuotaAlert",
    "QuotaCheck",
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

_default: Tracker | None = None
_default_lock = threading.Lock()


def get_default_tracker() -> Tracker:
    """The process-wide Tracker behind the module-level functions, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tracker()
    return _default


def execute_with_tracking(request: Any, context: Any) -> Any:
    """:meth:`Tracker.execute_with_tracking` on the default tracker."""
    return get_default_tracker().execute_with_tracking(request, context)


def wrap_with_tracking(context: Any, call: Any, **kwargs: Any) -> Any:
    """:meth:`Tracker.wrap_with_tracking` on the default tracker."""
    return get_default_tracker().wrap_with_tracking(context, call, **kwargs)


def track_usage(context: Any, provider: str, model: str, api_response: Any) -> UsageRecord:
    """:meth:`Tracker.track_usage` on the default tracker."""
    return get_default_tracker().track_usage(context, provider, model, api_response)


def track_failure(context: Any, provider: str, model: str, error: Any) -> UsageRecord:
    """:meth:`Tracker.track_failure` on the default tracker."""
    return get_default_tracker().track_failure(context, provider, model, error)


def check_quota(
    organization_id: str,
    provider: str,
    model: str,
    estimated_cost: Decimal | float | str,
    user_id: str | None = None,
) -> list[QuotaCheck]:
    """:meth:`Tracker.check_quota` on the default tracker."""
    return get_default_tracker().check_quota(
        organization_id, provider, model, estimated_cost, user_id
    )


def estimate_cost(
    provider: str, model: str, messages: Sequence[Any], max_output_tokens: int = 1000
) -> Decimal:
    """:meth:`Tracker.estimate_cost` on the default tracker."""
    return get_default_tracker().estimate_cost(provider, model, messages, max_output_tokens)


def get_quota_status(organization_id: str) -> list[QuotaStatus]:
    """:meth:`Tracker.get_quota_status` on the default tracker."""
    return get_default_tracker().get_quota_status(organization_id)
