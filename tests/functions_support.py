"""Helpers for the HTTP functions' tests (``tests/test_functions_*.py``): credentials, a small
world of organizations, members and API keys in a fresh database, the fake provider wired
into the environment, and clients for ``functions/main.py``'s targets.

Import the fixtures into a test module: ``from tests.functions_support import world, ...``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import functions_framework
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from quotaflow.models import Usage
from quotaflow.server import http as quotaflow_http
from quotaflow.server.auth import create_api_key, revoke_api_key
from quotaflow.testing import FakeProviderServer

from tests.db import REPO_ROOT, new_auth_user

SOURCE = str(REPO_ROOT / "functions" / "main.py")
"""What ``functions-framework --source=functions/main.py`` deploys: the re-exported targets."""

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
SERVICE_ROLE_KEY = jwt.encode(
    {"iss": "supabase-demo", "role": "service_role", "exp": 1983812996}, JWT_SECRET
)
"""A service-role key shaped like Supabase's (a JWT), so supabase-py accepts it."""

REPLY = "The quick brown fox jumps over the lazy dog."
USAGE = Usage(input_tokens=1000, output_tokens=100)
GPT4O_COST = Decimal("0.0035")
"""gpt-4o at $2.50 / $10.00 per million tokens: 1000 prompt + 100 output tokens."""

Conn = psycopg.Connection[Any]


def user_jwt(
    sub: uuid.UUID | str,
    *,
    secret: str = JWT_SECRET,
    aud: str = "authenticated",
    role: str = "authenticated",
    expires_in: int = 3600,
    **claims: Any,
) -> str:
    """A Supabase-style access token (HS256)."""
    now = int(time.time())
    payload = {
        "sub": str(sub),
        "aud": aud,
        "role": role,
        "iat": now,
        "exp": now + expires_in,
        "email": f"{sub}@example.test",
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------
# A JWKS endpoint on loopback (asymmetric Supabase signing keys)
# ---------------------------------------------------------------------------------------


class JwksServer:
    """Publishes an ES256 public key at ``url`` and signs tokens with its private key."""

    def __init__(self) -> None:
        self.kid = f"test-{uuid.uuid4().hex[:8]}"
        self._key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]})
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/auth/v1/.well-known/jwks.json"

    def token(self, sub: uuid.UUID | str, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "sub": str(sub),
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + 3600,
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm="ES256", headers={"kid": self.kid})

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ---------------------------------------------------------------------------------------
# The world: two organizations, their people and keys
# ---------------------------------------------------------------------------------------


@dataclass
class World:
    db_url: str
    org: str
    other_org: str
    owner: uuid.UUID
    admin: uuid.UUID
    member: uuid.UUID
    stranger: uuid.UUID
    """A member of the other organization only."""
    api_key: str
    api_key_id: str
    other_api_key: str
    revoked_api_key: str

    def token(self, who: str) -> str:
        """``service``, ``key``, or the JWT of ``owner``, ``admin``, ``member``, ``stranger``."""
        if who == "service":
            return SERVICE_ROLE_KEY
        if who == "key":
            return self.api_key
        return user_jwt(getattr(self, who))


def make_org(conn: Conn, name: str, time_zone: str = "UTC") -> str:
    row = conn.execute(
        "insert into public.organizations (name, time_zone) values (%s, %s) returning id",
        (name, time_zone),
    ).fetchone()
    assert row is not None
    return str(row[0])


def add_member(conn: Conn, org: str, user: uuid.UUID, role: str) -> None:
    conn.execute(
        "insert into public.organization_members (organization_id, user_id, role)"
        " values (%s, %s, %s)",
        (org, user, role),
    )


def add_quota(conn: Conn, org: str, limit: Any, **kw: Any) -> str:
    cols = {"organization_id": org, "quota_limit": Decimal(str(limit)), "quota_type": "daily", **kw}
    names = ", ".join(cols)
    marks = ", ".join(f"%({k})s" for k in cols)
    row = conn.execute(
        f"insert into public.usage_quotas ({names}) values ({marks}) returning id", cols
    ).fetchone()
    assert row is not None
    return str(row[0])


def quota_row(conn: Conn, quota_id: str) -> dict[str, Any]:
    cur = conn.execute(
        "select current_usage, reserved, quota_limit from public.usage_quotas where id = %s",
        (quota_id,),
    )
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], row, strict=True))


def log_rows(conn: Conn, org: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        "select * from public.api_usage_logs where organization_id = %s order by occurred_at",
        (org,),
    )
    assert cur.description is not None
    names = [c.name for c in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture
def world(db_url: str, conn: Conn) -> Iterator[World]:
    """Organization ``org`` (owner, admin, member, an API key, a revoked key) and ``other_org``
    (a stranger, its own key), in a fresh database; the functions' pools closed afterwards."""
    org = make_org(conn, "Acme")
    other = make_org(conn, "Other Inc", "Europe/Berlin")
    owner = new_auth_user(conn, "owner@acme.test")
    admin = new_auth_user(conn, "admin@acme.test")
    member = new_auth_user(conn, "member@acme.test")
    stranger = new_auth_user(conn, "stranger@other.test")
    add_member(conn, org, owner, "owner")
    add_member(conn, org, admin, "admin")
    add_member(conn, org, member, "member")
    add_member(conn, other, stranger, "member")
    key_id, key = create_api_key(conn, org, "backend")
    _, other_key = create_api_key(conn, other, "other backend")
    revoked_id, revoked = create_api_key(conn, org, "old backend")
    assert revoke_api_key(conn, revoked_id)
    yield World(db_url, org, other, owner, admin, member, stranger, key, key_id, other_key, revoked)
    quotaflow_http.close_runtimes()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProviderServer]:
    """The fake provider, with the environment pointing every provider at it."""
    with FakeProviderServer(usage=USAGE, reply_text=REPLY) as server:
        for name, url in {
            "OPENAI": f"{server.url}/v1",
            "XAI": f"{server.url}/v1",
            "ANTHROPIC": server.url,
            "GOOGLE": server.url,
        }.items():
            monkeypatch.setenv(f"QUOTAFLOW_{name}_BASE_URL", url)
        for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "XAI_API_KEY"):
            monkeypatch.setenv(var, "test-key")
        yield server


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def function_config(db_url: str, jwks_url: str | None = None) -> dict[str, Any]:
    """What the targets read from their Flask config (else the environment)."""
    config: dict[str, Any] = {
        "QUOTAFLOW_DATABASE_URL": db_url,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY,
    }
    if jwks_url:
        config["SUPABASE_JWKS_URL"] = jwks_url
    return config


_apps: dict[str, Any] = {}


def app_for(target: str, config: dict[str, Any]) -> Any:
    """``functions_framework.create_app(target, functions/main.py)``, made once per session;
    its config replaced for the calling test."""
    app = _apps.get(target)
    if app is None:
        app = _apps[target] = functions_framework.create_app(target, SOURCE)
    for key in (
        "QUOTAFLOW_DATABASE_URL",
        "SUPABASE_JWT_SECRET",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_JWKS_URL",
    ):
        app.config.pop(key, None)
    app.config.update(config)
    return app


# ---------------------------------------------------------------------------------------
# Calling the targets
# ---------------------------------------------------------------------------------------

UNREACHABLE_DB = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"


class Api:
    """Calls targets as one of the world's callers (``as_``: service, key, owner, admin,
    member, stranger, or a raw token; None sends no credential)."""

    def __init__(self, world: World | None, jwks_url: str | None = None) -> None:
        self._world = world
        self.config = function_config(world.db_url if world else UNREACHABLE_DB, jwks_url)

    @property
    def world(self) -> World:
        assert self._world is not None, "this test runs without a database"
        return self._world

    def token(self, as_: str | None) -> str | None:
        if as_ is None:
            return None
        if as_ == "service":
            return SERVICE_ROLE_KEY
        if as_ in ("key", "owner", "admin", "member", "stranger"):
            return self.world.token(as_)
        return as_

    def call(
        self,
        method: str,
        target: str,
        *,
        as_: str | None = "service",
        json_body: Any = None,
        data: bytes | str | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        client = app_for(target, self.config).test_client()
        kwargs: dict[str, Any] = {"headers": {**bearer(self.token(as_)), **(headers or {})}}
        if json_body is not None:
            kwargs["json"] = json_body
        if data is not None:
            kwargs["data"] = data
        if params is not None:
            kwargs["query_string"] = params
        return client.open("/", method=method, **kwargs)

    def post(self, target: str, body: Any, as_: str | None = "service", **kw: Any) -> Any:
        return self.call("POST", target, as_=as_, json_body=body, **kw)

    def get(self, target: str, as_: str | None = "service", **params: Any) -> Any:
        return self.call("GET", target, as_=as_, params=params)


@pytest.fixture
def api(world: World, jwks: JwksServer) -> Api:
    return Api(world, jwks.url)


@pytest.fixture
def bare_api() -> Api:
    """Targets with no database behind them: for what is refused before any query."""
    return Api(None)


def execute_body(org: str, **context: Any) -> dict[str, Any]:
    return {
        "request": {
            "provider": "openai",
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Say something about foxes."}],
            "max_tokens": 200,
        },
        "context": {"organization_id": org, **context},
    }


def event_body(org: str, request_id: str = "evt-1", **kw: Any) -> dict[str, Any]:
    return {
        "organization_id": org,
        "request_id": request_id,
        "provider": "openai",
        "model": "gpt-4o",
        "usage": {"input_tokens": 1000, "output_tokens": 100},
        **kw,
    }


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]  # type: ignore[no-any-return]
