"""The one exception tree of quotaflow.

    QuotaflowError
    ├── ConfigurationError        missing or invalid configuration
    ├── ValidationError           a request, context or usage that cannot be accepted
    │   └── UnknownOrganizationError  the organization named does not exist
    ├── QuotaExceededError        a hard quota refuses the call (message contains "Quota exceeded")
    ├── PricingNotFoundError      no price row for the provider and model
    ├── IdempotencyConflictError  a request_id reused with different content
    ├── AuthorizationError        the caller may not act on this organization
    │   └── AuthenticationError   no valid credential (missing, expired, revoked, bad signature)
    ├── ProviderError             the LLM provider failed or answered with an error
    └── TrackingError             the backend (database or functions) could not be reached or failed
        └── BackendUnavailableError  the backend is unreachable (connection refused, timeout)

Lower-level errors (psycopg, httpx) are translated in one place each (``_db_errors`` for
SQL errcodes, the HTTP backend for status codes) with ``raise ... from exc``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any


class QuotaflowError(Exception):
    """Base class of every error quotaflow raises."""

    code = "quotaflow_error"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description, used by the HTTP functions."""
        return {"code": self.code, "message": str(self)}


class ConfigurationError(QuotaflowError):
    """Configuration is missing or invalid (no database URL, unknown backend, ...)."""

    code = "configuration_error"


class ValidationError(QuotaflowError, ValueError):
    """A request, context or usage record that cannot be accepted."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}


class QuotaExceededError(QuotaflowError):
    """A hard quota refuses the call; carries the binding quota's figures."""

    code = "quota_exceeded"

    def __init__(
        self,
        message: str = "Quota exceeded",
        *,
        quota_id: str | None = None,
        quota_type: str | None = None,
        metric: str | None = None,
        quota_limit: Decimal | None = None,
        current_usage: Decimal | None = None,
        reserved: Decimal | None = None,
        remaining: Decimal | None = None,
        requested: Decimal | None = None,
        reset_at: datetime | None = None,
    ) -> None:
        if "Quota exceeded" not in message:
            message = f"Quota exceeded: {message}"
        super().__init__(message)
        self.quota_id = quota_id
        self.quota_type = quota_type
        self.metric = metric
        self.quota_limit = quota_limit
        self.current_usage = current_usage
        self.reserved = reserved
        self.remaining = remaining
        self.requested = requested
        self.reset_at = reset_at

    def to_dict(self) -> dict[str, Any]:
        def s(v: Any) -> Any:
            return None if v is None else str(v) if isinstance(v, Decimal) else v

        return {
            **super().to_dict(),
            "quota_id": self.quota_id,
            "quota_type": self.quota_type,
            "metric": self.metric,
            "quota_limit": s(self.quota_limit),
            "current_usage": s(self.current_usage),
            "reserved": s(self.reserved),
            "remaining": s(self.remaining),
            "requested": s(self.requested),
            "reset_at": self.reset_at.isoformat() if self.reset_at else None,
        }


class PricingNotFoundError(QuotaflowError):
    """No price row is known for the provider and model (never priced as $0)."""

    code = "pricing_not_found"

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None):
        super().__init__(message)
        self.provider = provider
        self.model = model

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "provider": self.provider, "model": self.model}


class IdempotencyConflictError(QuotaflowError):
    """The same request_id was recorded before with different content."""

    code = "idempotency_conflict"


class AuthorizationError(QuotaflowError):
    """The caller is not allowed to act on this organization or object."""

    code = "forbidden"


class AuthenticationError(AuthorizationError):
    """The credential is missing, malformed, expired, revoked or not signed by a trusted key."""

    code = "unauthorized"


class UnknownOrganizationError(ValidationError):
    """The organization named in the request does not exist."""

    code = "organization_not_found"

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"unknown organization {organization_id}", field="organization_id")
        self.organization_id = organization_id


class ProviderError(QuotaflowError):
    """The LLM provider failed: carries the provider, HTTP status and whether a retry may help."""

    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {
            **super().to_dict(),
            "provider": self.provider,
            "status": self.status,
            "retryable": self.retryable,
        }


class TrackingError(QuotaflowError):
    """The tracking backend failed to answer or rejected the request."""

    code = "tracking_error"


class BackendUnavailableError(TrackingError):
    """The tracking backend could not be reached (connection refused, timeout, shutdown)."""

    code = "backend_unavailable"
