"""Who is calling the HTTP functions, and whether they may act on an organization.

Every request carries ``Authorization: Bearer <credential>``, one of three kinds:

* **the service-role key** (``SUPABASE_SERVICE_ROLE_KEY``), compared in constant time. It acts
  for every organization (the organization must exist).
* **an organization API key** (``qf_`` + 43 url-safe characters), for an app's own servers
  (seed 000's ``checkAuthentication``). Made by :func:`create_api_key`, shown once, stored only
  as its SHA-256 digest, looked up with ``public.verify_api_key`` and revocable with
  :func:`revoke_api_key`. It acts for its one organization.
* **a Supabase user JWT**, verified with the project's HS256 secret (``SUPABASE_JWT_SECRET``) or
  with the asymmetric keys published at ``SUPABASE_JWKS_URL`` (RS256/ES256/EdDSA; the key set
  is cached and re-fetched for an unknown ``kid``). ``exp``, ``aud`` (``authenticated``, or
  ``QUOTAFLOW_JWT_AUDIENCE``) and ``role`` (``authenticated``) are required and checked. The
  user acts for the organizations they are a member of (``public.organization_members``),
  with their role there: ``owner``, ``admin`` or ``member``.

:func:`authenticate` turns a header into a :class:`Principal` or raises
:class:`AuthenticationError` (HTTP 401); :func:`authorize` checks a principal against an
organization and raises :class:`~quotaflow.errors.AuthorizationError` (403) or
:class:`UnknownOrganizationError` (404). Which targets need which access is the functions'
decision (see :mod:`quotaflow.server.targets`); this module only answers "who" and "which role".

Database access goes through whatever the caller passes as ``db``: a psycopg connection, a
:class:`~quotaflow.backends.PostgresBackend` (its pool) or a database URL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .._db import Db, db_cursor
from ..errors import (
    AuthenticationError,
    AuthorizationError,
    BackendUnavailableError,
    UnknownOrganizationError,
    ValidationError,
)

__all__ = [
    "ADMIN_ROLES",
    "API_KEY_PREFIX",
    "ApiKeyInfo",
    "AuthConfig",
    "AuthenticationError",
    "Principal",
    "UnknownOrganizationError",
    "api_key_prefix",
    "authenticate",
    "authorize",
    "bearer_token",
    "create_api_key",
    "generate_api_key",
    "hash_api_key",
    "list_api_keys",
    "organization_role",
    "revoke_api_key",
    "verify_api_key",
    "verify_jwt",
]

API_KEY_PREFIX = "qf_"
_API_KEY_RANDOM_BYTES = 32  # 256 bits: see the api_keys migration for why SHA-256 suffices
_API_KEY_RE = re.compile(r"^qf_[A-Za-z0-9_-]{43}$")
_DISPLAY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8

ADMIN_ROLES = frozenset({"owner", "admin"})
"""Organization roles that count as administrators."""

# JWT algorithms: HS256 with the project secret; these with the JWKS. Never "none".
_ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})
DEFAULT_AUDIENCE = "authenticated"
DEFAULT_LEEWAY_SECONDS = 5.0
"""Clock skew tolerated on ``exp``/``nbf``/``iat``."""
JWKS_CACHE_SECONDS = 300.0
JWKS_TIMEOUT_SECONDS = 5.0


# ---------------------------------------------------------------------------------------
# Configuration and principals
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthConfig:
    """What credentials are trusted. Arguments first, else :meth:`from_env`."""

    jwt_secret: str | None = None
    """HS256 secret of the Supabase project (``SUPABASE_JWT_SECRET``)."""
    jwks_url: str | None = None
    """JWKS of the project's asymmetric signing keys (``SUPABASE_JWKS_URL``)."""
    service_role_key: str | None = None
    """``SUPABASE_SERVICE_ROLE_KEY``: the credential that acts for every organization."""
    audience: str = DEFAULT_AUDIENCE
    leeway: float = DEFAULT_LEEWAY_SECONDS

    @classmethod
    def from_env(
        cls, get: Callable[[str], str | None] | Mapping[str, str] | None = None
    ) -> AuthConfig:
        """Reads ``SUPABASE_JWT_SECRET``, ``SUPABASE_JWKS_URL``, ``SUPABASE_SERVICE_ROLE_KEY``
        and ``QUOTAFLOW_JWT_AUDIENCE`` from ``get`` (a mapping or lookup; the environment)."""
        if get is None:
            lookup: Callable[[str], str | None] = os.environ.get
        elif isinstance(get, Mapping):
            lookup = get.get
        else:
            lookup = get
        return cls(
            jwt_secret=lookup("SUPABASE_JWT_SECRET") or None,
            jwks_url=lookup("SUPABASE_JWKS_URL") or None,
            service_role_key=lookup("SUPABASE_SERVICE_ROLE_KEY") or None,
            audience=lookup("QUOTAFLOW_JWT_AUDIENCE") or DEFAULT_AUDIENCE,
        )


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: Literal["service_role", "api_key", "user"]
    subject: str
    """``service_role``, the API key's id, or the Supabase user id (JWT ``sub``)."""
    organization_id: str | None = None
    """API keys only: the one organization the key acts for."""
    claims: Mapping[str, Any] = field(default_factory=dict)
    """User JWTs only: the verified claims."""

    @property
    def user_id(self) -> str | None:
        """The Supabase user id of a JWT caller; None for keys."""
        return self.subject if self.kind == "user" else None


# ---------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str:
    """The credential of an ``Authorization: Bearer <token>`` header, or AuthenticationError."""
    if not authorization or not authorization.strip():
        raise AuthenticationError(
            "missing Authorization header: send 'Authorization: Bearer <key>'"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Authorization must be 'Bearer <token>'")
    return token


def authenticate(
    authorization: str | None, config: AuthConfig, db: Db | Callable[[], Db]
) -> Principal:
    """Who sent this ``Authorization`` header: service role, an organization API key, or a
    member's Supabase JWT. Raises :class:`AuthenticationError` when nobody trusted did.

    ``db`` (or a function returning it, called only for API keys) looks keys up."""
    token = bearer_token(authorization)
    if config.service_role_key and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), config.service_role_key.encode("utf-8")
    ):
        return Principal("service_role", "service_role")
    if token.startswith(API_KEY_PREFIX):
        principal = verify_api_key(db() if callable(db) else db, token)
        if principal is None:
            raise AuthenticationError("API key is unknown, revoked or expired")
        return principal
    if token.count(".") == 2:
        claims = verify_jwt(token, config)
        return Principal("user", str(claims["sub"]), claims=claims)
    raise AuthenticationError(
        "unrecognized credential: expected the service-role key, an organization API key"
        " (qf_...) or a Supabase user JWT"
    )


_jwks_clients: dict[str, Any] = {}
_jwks_lock = threading.Lock()


def _jwks_client(url: str) -> Any:
    import jwt

    with _jwks_lock:
        client = _jwks_clients.get(url)
        if client is None:
            client = jwt.PyJWKClient(
                url, cache_keys=True, lifespan=JWKS_CACHE_SECONDS, timeout=JWKS_TIMEOUT_SECONDS
            )
            _jwks_clients[url] = client
        return client


def verify_jwt(token: str, config: AuthConfig) -> dict[str, Any]:
    """The claims of a Supabase user JWT whose signature, ``exp``, ``aud`` and ``role`` check
    out; :class:`AuthenticationError` (with the reason) otherwise."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"malformed JWT: {exc}") from exc
    alg = header.get("alg")
    key: Any
    if alg == "HS256":
        if not config.jwt_secret:
            raise AuthenticationError(
                "HS256 tokens are not accepted here (no JWT secret configured)"
            )
        key = config.jwt_secret
    elif alg in _ASYMMETRIC_ALGORITHMS:
        if not config.jwks_url:
            raise AuthenticationError(
                f"{alg} tokens are not accepted here (no JWKS URL configured)"
            )
        try:
            key = _jwks_client(config.jwks_url).get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientConnectionError as exc:
            raise BackendUnavailableError(f"cannot fetch the JWT signing keys: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"no trusted signing key for this JWT: {exc}") from exc
    else:
        raise AuthenticationError(f"JWT algorithm {alg!r} is not accepted")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=config.audience,
            leeway=config.leeway,
            options={"require": ["exp", "sub", "aud", "role"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthenticationError("JWT has expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise AuthenticationError(f"JWT audience must be {config.audience!r}") from exc
    except jwt.InvalidSignatureError as exc:
        raise AuthenticationError("JWT signature is not valid") from exc
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"invalid JWT: {exc}") from exc
    if claims.get("role") != "authenticated":
        raise AuthenticationError(
            f"JWT role must be 'authenticated' (got {claims.get('role')!r}); server-side"
            " callers use the service-role key or an organization API key"
        )
    try:
        claims["sub"] = str(uuid.UUID(str(claims["sub"])))
    except ValueError as exc:
        raise AuthenticationError("JWT sub is not a Supabase user id") from exc
    return claims


# ---------------------------------------------------------------------------------------
# Authorization
# ---------------------------------------------------------------------------------------


def _uuid(value: str, field_name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise ValidationError(f"{field_name} must be a UUID", field=field_name) from None


def organization_role(db: Db, organization_id: str, user_id: str) -> str | None:
    """The user's role in the organization (owner, admin, member), or None."""
    with db_cursor(db) as cur:
        row = cur.execute(
            "select m.role from public.organization_members m"
            " where m.organization_id = %s and m.user_id = %s",
            (_uuid(organization_id, "organization_id"), _uuid(user_id, "user_id")),
        ).fetchone()
    return None if row is None else str(row["role"])


def authorize(db: Db, principal: Principal, organization_id: str, *, admin: bool = False) -> str:
    """Checks that ``principal`` may act on the organization; with ``admin`` only owners and
    admins among users (keys act fully for their scope). Returns the caller's role there:
    ``service_role``, ``api_key``, ``owner``, ``admin`` or ``member``.

    Raises :class:`~quotaflow.errors.AuthorizationError` (not a member, another
    organization's key, not an admin), :class:`UnknownOrganizationError` (service role
    naming an organization that does not exist), :class:`~quotaflow.errors.ValidationError`
    (not a UUID).
    """
    org = _uuid(organization_id, "organization_id")
    if principal.kind == "service_role":
        with db_cursor(db) as cur:
            found = cur.execute(
                "select 1 as found from public.organizations o where o.id = %s", (org,)
            ).fetchone()
        if found is None:
            raise UnknownOrganizationError(org)
        return "service_role"
    if principal.kind == "api_key":
        if principal.organization_id != org:
            raise AuthorizationError(f"this API key is not valid for organization {org}")
        return "api_key"
    role = organization_role(db, org, principal.subject)
    if role is None:
        raise AuthorizationError(f"not a member of organization {org}")
    if admin and role not in ADMIN_ROLES:
        raise AuthorizationError(
            f"this needs an owner or admin of organization {org} (you are {role})"
        )
    return role


# ---------------------------------------------------------------------------------------
# Organization API keys
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key's metadata (never its hash or plaintext)."""

    key_id: str
    organization_id: str
    name: str
    key_prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (
            self.expires_at is None or self.expires_at > datetime.now(self.expires_at.tzinfo)
        )


def generate_api_key() -> str:
    """A new organization API key: ``qf_`` + 43 url-safe characters (256 random bits)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(_API_KEY_RANDOM_BYTES)


def hash_api_key(key: str) -> str:
    """The lowercase hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def api_key_prefix(key: str) -> str:
    """The part of a key shown in listings (``qf_`` and 8 characters)."""
    return key[:_DISPLAY_PREFIX_LENGTH]


def create_api_key(
    db: Db, organization_id: str, name: str, *, expires_at: datetime | None = None
) -> tuple[str, str]:
    """Creates an API key for one organization; returns ``(key_id, plaintext)``.

    The plaintext exists only in the return value: show it once, it cannot be recovered.
    On a connection that is not in autocommit mode the insert joins its open transaction.
    """
    key = generate_api_key()
    with db_cursor(db) as cur:
        row = cur.execute(
            "select public.create_api_key(%s, %s, %s, %s, %s) as key_id",
            (
                _uuid(organization_id, "organization_id"),
                name,
                hash_api_key(key),
                api_key_prefix(key),
                expires_at,
            ),
        ).fetchone()
    assert row is not None
    return str(row["key_id"]), key


def revoke_api_key(db: Db, key_id: str, *, organization_id: str | None = None) -> bool:
    """Revokes a key at once (only within ``organization_id`` when given). True when it was
    active and is now revoked; False when unknown or already revoked."""
    with db_cursor(db) as cur:
        row = cur.execute(
            "select public.revoke_api_key(%s, %s) as revoked",
            (
                _uuid(key_id, "key_id"),
                None if organization_id is None else _uuid(organization_id, "organization_id"),
            ),
        ).fetchone()
    return bool(row and row["revoked"])


def list_api_keys(db: Db, organization_id: str) -> list[ApiKeyInfo]:
    """The organization's keys, newest first, revoked ones included."""
    with db_cursor(db) as cur:
        rows = cur.execute(
            "select k.id, k.organization_id, k.name, k.key_prefix, k.created_at, k.expires_at,"
            " k.last_used_at, k.revoked_at from public.api_keys k"
            " where k.organization_id = %s order by k.created_at desc, k.id",
            (_uuid(organization_id, "organization_id"),),
        ).fetchall()
    return [
        ApiKeyInfo(
            key_id=str(r["id"]),
            organization_id=str(r["organization_id"]),
            name=r["name"],
            key_prefix=r["key_prefix"],
            created_at=r["created_at"],
            expires_at=r["expires_at"],
            last_used_at=r["last_used_at"],
            revoked_at=r["revoked_at"],
        )
        for r in rows
    ]


def verify_api_key(db: Db, key: str) -> Principal | None:
    """The principal of an active API key, or None (malformed, unknown, revoked, expired)."""
    if not _API_KEY_RE.match(key):
        return None
    with db_cursor(db) as cur:
        row = cur.execute(
            "select v.key_id, v.organization_id from public.verify_api_key(%s) v",
            (hash_api_key(key),),
        ).fetchone()
    if row is None:
        return None
    return Principal("api_key", str(row["key_id"]), organization_id=str(row["organization_id"]))
