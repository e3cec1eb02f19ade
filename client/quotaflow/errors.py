"""The one exception tree of quotaflow.

    QuotaflowError                    500  P0001  base class
    ├── ConfigurationError            500  F0000  missing or invalid configuration
    ├── ValidationError               400  22023  a request, context or usage that is refused
    │   └── UnknownOrganizationError  404  QF004  the organization named does not exist
    ├── QuotaExceededError            429  QF001  a hard quota refuses the call
    ├── PricingNotFoundError          422  QF002  no price row for the provider and model
    ├── IdempotencyConflictError      409  QF003  a request_id reused with different content
    ├── AuthorizationError            403  42501  the caller may not act on this organization
    │   └── AuthenticationError       401  28000  no valid credential
    ├── ProviderError                 502  QF005  the LLM provider failed or answered with an error
    └── TrackingError                 500  XX000  the backend (database or functions) failed
        └── BackendUnavailableError   503  08000  the backend is unreachable

Each class carries its ``code`` (the HTTP body's stable ``error.code``), its ``http_status``
and its ``sqlstate``; every mapping is derived from them, in this module:

* exception → HTTP status: ``exc.http_status`` (the HTTP functions' error replies);
* exception → SQLSTATE: ``exc.sqlstate`` (the failed items of a batch settle over HTTP);
* SQLSTATE → exception: :func:`error_for_sqlstate` (SQL errors, batch items);
* HTTP → exception: :func:`error_for_http` (the HTTP backend reading an error body).

``from_dict`` rebuilds an error from what ``to_dict`` wrote (or from a SQL error's JSON
detail), so an error survives the trip through SQL or HTTP with its fields. Lower-level errors
(psycopg, httpx) are translated with ``raise ... from exc`` in the backends.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

__all__ = [
    "ERROR_CLASSES",
    "AuthenticationError",
    "AuthorizationError",
    "BackendUnavailableError",
    "ConfigurationError",
    "IdempotencyConflictError",
    "PricingNotFoundError",
    "ProviderError",
    "QuotaExceededError",
    "QuotaflowError",
    "TrackingError",
    "UnknownOrganizationError",
    "ValidationError",
    "error_for_http",
    "error_for_sqlstate",
]


class QuotaflowError(Exception):
    """Base class of every error quotaflow raises."""

    code: ClassVar[str] = "quotaflow_error"
    http_status: ClassVar[int] = 500
    sqlstate: ClassVar[str] = "P0001"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description, used by the HTTP functions."""
        return {"code": self.code, "message": str(self)}

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        """The error again from its message and ``to_dict`` fields (or a SQL error's detail)."""
        return cls(message)


class ConfigurationError(QuotaflowError):
    """Configuration is missing or invalid (no database URL, unknown backend, ...)."""

    code = "configuration_error"
    sqlstate = "F0000"


class ValidationError(QuotaflowError, ValueError):
    """A request, context or usage record that cannot be accepted."""

    code = "invalid_request"
    http_status = 400
    sqlstate = "22023"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "field": self.field}

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        field = detail.get("field")
        return cls(message, field=field if isinstance(field, str) else None)


class UnknownOrganizationError(ValidationError):
    """The organization named in the request does not exist."""

    code = "organization_not_found"
    http_status = 404
    sqlstate = "QF004"

    def __init__(self, organization_id: str | None, *, message: str | None = None) -> None:
        super().__init__(message or f"unknown organization {organization_id}",
                         field="organization_id")  # fmt: skip
        self.organization_id = organization_id

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "organization_id": self.organization_id}

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        org = detail.get("organization_id")
        return cls(str(org) if org is not None else None, message=message)


def _decimal(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def _instant(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v))


_WHOLE_LIMIT = "the call needs more than the quota's whole limit"


class QuotaExceededError(QuotaflowError):
    """A hard quota refuses the call; carries the binding quota's figures."""

    code = "quota_exceeded"
    http_status = 429
    sqlstate = "QF001"

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
        exceeds = requested is not None and quota_limit is not None and requested > quota_limit
        if exceeds and _WHOLE_LIMIT not in message:
            message += f"; {_WHOLE_LIMIT} ({requested} > {quota_limit}): waiting cannot help"
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

    @property
    def exceeds_limit(self) -> bool:
        """The call needs more than the quota's whole limit: no reset will let it through."""
        return (
            self.requested is not None
            and self.quota_limit is not None
            and self.requested > self.quota_limit
        )

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
            "exceeds_limit": self.exceeds_limit,
        }

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        quota_id = detail.get("quota_id")
        return cls(
            message,
            quota_id=None if quota_id is None else str(quota_id),
            quota_type=detail.get("quota_type"),
            metric=detail.get("metric"),
            quota_limit=_decimal(detail.get("quota_limit")),
            current_usage=_decimal(detail.get("current_usage")),
            reserved=_decimal(detail.get("reserved")),
            remaining=_decimal(detail.get("remaining")),
            requested=_decimal(detail.get("requested")),
            reset_at=_instant(detail.get("reset_at")),
        )


class PricingNotFoundError(QuotaflowError):
    """No price row is known for the provider and model (never priced as $0)."""

    code = "pricing_not_found"
    http_status = 422
    sqlstate = "QF002"

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None):
        super().__init__(message)
        self.provider = provider
        self.model = model

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "provider": self.provider, "model": self.model}

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        return cls(message, provider=detail.get("provider"), model=detail.get("model"))


class IdempotencyConflictError(QuotaflowError):
    """The same request_id was recorded before with different content."""

    code = "idempotency_conflict"
    http_status = 409
    sqlstate = "QF003"


class AuthorizationError(QuotaflowError):
    """The caller is not allowed to act on this organization or object."""

    code = "forbidden"
    http_status = 403
    sqlstate = "42501"


class AuthenticationError(AuthorizationError):
    """The credential is missing, malformed, expired, revoked or not signed by a trusted key."""

    code = "unauthorized"
    http_status = 401
    sqlstate = "28000"


class ProviderError(QuotaflowError):
    """The LLM provider failed: carries the provider, HTTP status and whether a retry may help."""

    code = "provider_error"
    http_status = 502
    sqlstate = "QF005"

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

    @classmethod
    def from_dict(cls, message: str, detail: Mapping[str, Any]) -> QuotaflowError:
        status = detail.get("status")
        return cls(
            message,
            provider=str(detail.get("provider") or "unknown"),
            status=status if isinstance(status, int) else None,
            retryable=bool(detail.get("retryable")),
        )


class TrackingError(QuotaflowError):
    """The tracking backend failed to answer or rejected the request."""

    code = "tracking_error"
    sqlstate = "XX000"


class BackendUnavailableError(TrackingError):
    """The tracking backend could not be reached (connection refused, timeout, shutdown)."""

    code = "backend_unavailable"
    http_status = 503
    sqlstate = "08000"


ERROR_CLASSES: tuple[type[QuotaflowError], ...] = (
    QuotaflowError,
    ConfigurationError,
    ValidationError,
    UnknownOrganizationError,
    QuotaExceededError,
    PricingNotFoundError,
    IdempotencyConflictError,
    AuthorizationError,
    AuthenticationError,
    ProviderError,
    TrackingError,
    BackendUnavailableError,
)
"""Every class of the tree; each ``code``, ``http_status``... is the one source of the maps."""

_BY_SQLSTATE = {cls.sqlstate: cls for cls in ERROR_CLASSES}
_BY_CODE = {cls.code: cls for cls in ERROR_CLASSES}
# A reply without a known code (a proxy's, a gateway's) maps by its status only where the
# status names one class: a bare 404 is a wrong path, not an unknown organization.
_BY_STATUS = {
    cls.http_status: cls
    for cls in ERROR_CLASSES
    if cls.http_status in (401, 403, 409, 422, 429, 503)
}

# SQLSTATE classes (first two characters) the tree has no exact entry for; any other class
# (42 undefined object, 54 program limit, 55 object state, 58 system error, XX internal, ...)
# is a fault of the server side: TrackingError.
_SQLSTATE_FAMILIES: dict[str, type[QuotaflowError]] = {
    "22": ValidationError,  # data exception: bad argument, out of range, ...
    "23": ValidationError,  # integrity constraint violation
    "08": BackendUnavailableError,  # connection exception
    "40": BackendUnavailableError,  # serialization failure, deadlock: a retry succeeds
    "53": BackendUnavailableError,  # insufficient resources: too many connections, disk full
    "57": BackendUnavailableError,  # operator intervention: shutdown, crash, cancel, timeout
}
# Exceptions inside those families that are the server's fault, not the request's.
_SERVER_FAULTS: dict[str, type[QuotaflowError]] = {
    "2200H": TrackingError,  # a sequence reached its maximum value
}


def error_class_for_sqlstate(sqlstate: str) -> type[QuotaflowError]:
    """The class an SQLSTATE maps to: its own, else its family's, else TrackingError."""
    return (
        _BY_SQLSTATE.get(sqlstate)
        or _SERVER_FAULTS.get(sqlstate)
        or _SQLSTATE_FAMILIES.get(sqlstate[:2], TrackingError)
    )


def error_for_sqlstate(
    sqlstate: str, message: str, detail: Mapping[str, Any] | None = None
) -> QuotaflowError:
    """The exception for a database error (its SQLSTATE, message and JSON detail)."""
    cls = error_class_for_sqlstate(sqlstate)
    if cls is BackendUnavailableError and not message.startswith("database unavailable"):
        message = f"database unavailable: {message}"
    return cls.from_dict(message, detail or {})


def error_class_for_http(status: int, code: str | None = None) -> type[QuotaflowError]:
    """The class an error reply maps to: by its ``code``, else by its status (other 4xx are
    ValidationError; 502/504 from a proxy, not the functions, mean unavailable)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return ValidationError
    if status in (502, 503, 504):
        return BackendUnavailableError
    return TrackingError


def error_for_http(
    status: int, message: str, detail: Mapping[str, Any] | None = None
) -> QuotaflowError:
    """The exception for an error reply: ``detail`` is the body's ``error`` object."""
    detail = detail or {}
    code = detail.get("code")
    return error_class_for_http(status, code if isinstance(code, str) else None).from_dict(
        message, detail
    )
