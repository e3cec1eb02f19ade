"""RLS and grants: every actor × every table × select/insert/update/delete, and the functions.

Each statement targets organization A's rows and runs as the actor would through PostgREST
(``act_as``: ``set local role`` + ``request.jwt.claims``) in a transaction that is rolled back,
so every cell of the matrix starts from the same data. Outcomes:

* ``ok``     — the statement saw or changed at least one row,
* ``none``   — it ran but RLS filtered every row (0 rows read or changed),
* ``denied`` — refused with 42501 (no grant, or a row that fails a policy's ``with check``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from tests.db import act_as, new_auth_user

Conn = psycopg.Connection[Any]
TABLES = [
    "organizations",
    "organization_members",
    "cost_estimates",
    "api_usage_logs",
    "usage_quotas",
    "quota_reservations",
    "quota_periods",
]
OPS = ["select", "insert", "update", "delete"]


@dataclass
class World:
    org_a: Any
    org_b: Any
    quota_a: Any
    users: dict[str, Any]  # actor name -> auth user id (None for anon / service_role)
    outsider: Any  # an auth user in no organization, for member inserts


def _org(conn: Conn, name: str) -> Any:
    row = conn.execute(
        "insert into public.organizations (name) values (%s) returning id", (name,)
    ).fetchone()
    assert row is not None
    return row[0]


def _populate(conn: Conn, org: Any, prefix: str) -> Any:
    """One quota, one settled call, one pending reservation and one closed period."""
    row = conn.execute(
        "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
        " values (%s, 'daily', 10) returning id",
        (org,),
    ).fetchone()
    assert row is not None
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => %s,"
        " provider => 'openai', model => 'gpt-4o', input_tokens => 1000, output_tokens => 10)",
        (org, f"{prefix}-call"),
    )
    conn.execute(
        "select * from public.reserve_quota(%s, %s, 'openai', 'gpt-4o', 0.01)",
        (org, f"{prefix}-pending"),
    )
    conn.execute(
        "insert into public.quota_periods (quota_id, organization_id, quota_type, metric,"
        " quota_limit, usage, window_start, window_end)"
        " values (%s, %s, 'daily', 'usd', 10, 1, now() - interval '2 days', now() - interval"
        " '1 day')",
        (row[0], org),
    )
    return row[0]


@pytest.fixture
def world(conn: Conn) -> World:
    org_a, org_b = _org(conn, "Tenant A"), _org(conn, "Tenant B")
    users = {
        "member_a": new_auth_user(conn, "member@a.test"),
        "admin_a": new_auth_user(conn, "admin@a.test"),
        "owner_a": new_auth_user(conn, "owner@a.test"),
        "owner_b": new_auth_user(conn, "owner@b.test"),
    }
    for name, org, role in [
        ("member_a", org_a, "member"),
        ("admin_a", org_a, "admin"),
        ("owner_a", org_a, "owner"),
        ("owner_b", org_b, "owner"),
    ]:
        conn.execute(
            "insert into public.organization_members (organization_id, user_id, role)"
            " values (%s, %s, %s)",
            (org, users[name], role),
        )
    quota_a = _populate(conn, org_a, "a")
    _populate(conn, org_b, "b")
    return World(org_a, org_b, quota_a, users, new_auth_user(conn, "outsider@x.test"))


def _statements(w: World) -> dict[tuple[str, str], tuple[str, tuple[Any, ...]]]:
    a, member = w.org_a, w.users["member_a"]
    return {
        ("organizations", "select"): ("select * from public.organizations where id = %s", (a,)),
        ("organizations", "insert"): (
            "insert into public.organizations (name) values ('Forged')",
            (),
        ),
        ("organizations", "update"): (
            "update public.organizations set name = 'Renamed' where id = %s",
            (a,),
        ),
        ("organizations", "delete"): ("delete from public.organizations where id = %s", (a,)),
        ("organization_members", "select"): (
            "select * from public.organization_members where organization_id = %s",
            (a,),
        ),
        ("organization_members", "insert"): (
            "insert into public.organization_members (organization_id, user_id, role)"
            " values (%s, %s, 'member')",
            (a, w.outsider),
        ),
        ("organization_members", "update"): (
            "update public.organization_members set role = 'admin'"
            " where organization_id = %s and user_id = %s",
            (a, member),
        ),
        ("organization_members", "delete"): (
            "delete from public.organization_members where organization_id = %s and user_id = %s",
            (a, member),
        ),
        ("cost_estimates", "select"): (
            "select * from public.cost_estimates where model = 'gpt-4o'",
            (),
        ),
        ("cost_estimates", "insert"): (
            "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
            " output_usd_per_mtok) values ('openai', 'forged-model', 0, 0)",
            (),
        ),
        ("cost_estimates", "update"): (
            "update public.cost_estimates set input_usd_per_mtok = 0 where model = 'gpt-4o'",
            (),
        ),
        ("cost_estimates", "delete"): (
            "delete from public.cost_estimates where model = 'gpt-3.5-turbo-instruct'",
            (),
        ),
        ("api_usage_logs", "select"): (
            "select * from public.api_usage_logs where organization_id = %s",
            (a,),
        ),
        ("api_usage_logs", "insert"): (
            "insert into public.api_usage_logs (organization_id, request_id, provider, model,"
            " cost_usd, credits) values (%s, 'forged', 'openai', 'gpt-4o', 0, 0)",
            (a,),
        ),
        ("api_usage_logs", "update"): (
            "update public.api_usage_logs set cost_usd = 0 where organization_id = %s",
            (a,),
        ),
        ("api_usage_logs", "delete"): (
            "delete from public.api_usage_logs where organization_id = %s",
            (a,),
        ),
        ("usage_quotas", "select"): (
            "select * from public.usage_quotas where organization_id = %s",
            (a,),
        ),
        ("usage_quotas", "insert"): (
            "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
            " values (%s, 'monthly', 50)",
            (a,),
        ),
        ("usage_quotas", "update"): (
            "update public.usage_quotas set quota_limit = 20 where organization_id = %s",
            (a,),
        ),
        ("usage_quotas", "delete"): (
            "delete from public.usage_quotas where organization_id = %s",
            (a,),
        ),
        ("quota_reservations", "select"): (
            "select * from public.quota_reservations where organization_id = %s",
            (a,),
        ),
        ("quota_reservations", "insert"): (
            "insert into public.quota_reservations (organization_id, request_id, provider,"
            " model, estimated_cost, expires_at) values (%s, 'forged', 'openai', 'gpt-4o', 0,"
            " now())",
            (a,),
        ),
        ("quota_reservations", "update"): (
            "update public.quota_reservations set status = 'released' where organization_id = %s",
            (a,),
        ),
        ("quota_reservations", "delete"): (
            "delete from public.quota_reservations where organization_id = %s",
            (a,),
        ),
        ("quota_periods", "select"): (
            "select * from public.quota_periods where organization_id = %s",
            (a,),
        ),
        ("quota_periods", "insert"): (
            "insert into public.quota_periods (quota_id, organization_id, quota_type, metric,"
            " quota_limit, usage, window_start, window_end) values (%s, %s, 'daily', 'usd', 1,"
            " 0, now() - interval '1 day', now())",
            (w.quota_a, a),
        ),
        ("quota_periods", "update"): (
            "update public.quota_periods set usage = 0 where organization_id = %s",
            (a,),
        ),
        ("quota_periods", "delete"): (
            "delete from public.quota_periods where organization_id = %s",
            (a,),
        ),
    }


def _actor(w: World, actor: str) -> tuple[str, Any]:
    if actor in ("anon", "service_role"):
        return actor, None
    return "authenticated", w.users[actor]


def _outcome(conn: Conn, role: str, sub: Any, sql: str, params: tuple[Any, ...]) -> str:
    try:
        with act_as(conn, role, sub=sub, rollback=True) as c:
            cur = c.execute(sql, params)
            n = len(cur.fetchall()) if sql.startswith("select") else cur.rowcount
    except psycopg.errors.InsufficientPrivilege:
        return "denied"
    return "ok" if n > 0 else "none"


# Expected outcome per actor: one string per table, one letter per op in OPS order
# (s i u d): o = ok, n = none (filtered to 0 rows), d = denied.
EXPECTED = {
    #                organizations  members  prices  logs    quotas  reservations  periods
    "anon":         ["dddd",        "dddd",  "dddd", "dddd", "dddd", "dddd",       "dddd"],
    "member_a":     ["odnd",        "odnn",  "oddd", "oddd", "odnn", "oddd",       "oddd"],
    "admin_a":      ["odod",        "odnn",  "oddd", "oddd", "oooo", "oddd",       "oddd"],
    "owner_a":      ["odod",        "oooo",  "oddd", "oddd", "oooo", "oddd",       "oddd"],
    "owner_b":      ["ndnd",        "ndnn",  "oddd", "nddd", "ndnn", "nddd",       "nddd"],
    "service_role": ["oooo",        "oooo",  "oooo", "oooo", "oooo", "oooo",       "oooo"],
}  # fmt: skip
LETTER = {"o": "ok", "n": "none", "d": "denied"}


@pytest.mark.parametrize("actor", list(EXPECTED))
def test_table_access_matrix(conn: Conn, world: World, actor: str) -> None:
    """Members read their organization's rows; owners/admins manage quotas; owners manage
    members; prices are read-only to users; logs, reservations and periods are written only
    by the functions (service_role); other tenants and anon see and change nothing."""
    role, sub = _actor(world, actor)
    statements = _statements(world)
    got = {
        (table, op): _outcome(conn, role, sub, *statements[table, op])
        for table in TABLES
        for op in OPS
    }
    expected = {
        (table, op): LETTER[letters[i]]
        for table, letters in zip(TABLES, EXPECTED[actor], strict=True)
        for i, op in enumerate(OPS)
    }
    assert {k: v for k, v in got.items() if v != expected[k]} == {}


@pytest.mark.parametrize("actor", ["member_a", "admin_a", "owner_a", "owner_b"])
def test_unfiltered_reads_return_only_the_callers_organization(
    conn: Conn, world: World, actor: str
) -> None:
    """`select *` without a filter returns only the caller's own organization's rows."""
    own = world.org_b if actor == "owner_b" else world.org_a
    with act_as(conn, "authenticated", sub=world.users[actor], rollback=True) as c:
        for table in TABLES:
            if table == "cost_estimates":
                continue
            column = "id" if table == "organizations" else "organization_id"
            seen = {r[0] for r in c.execute(f"select {column} from public.{table}").fetchall()}
            assert seen == {own}, table


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("update public.usage_quotas set current_usage = 0 where id = %s", ("quota",)),
        ("update public.usage_quotas set reserved = 0 where id = %s", ("quota",)),
        ("update public.usage_quotas set organization_id = %s where id = %s", ("org_b", "quota")),
        (
            "insert into public.usage_quotas (organization_id, quota_type, quota_limit,"
            " current_usage) values (%s, 'daily', 1, 0.5)",
            ("org_a",),
        ),
        (
            "insert into public.usage_quotas (organization_id, quota_type, quota_limit)"
            " values (%s, 'daily', 1)",
            ("org_b",),
        ),
        ("update public.organizations set credits_per_usd = 1 where id = %s", ("org_a",)),
    ],
    ids=["usage", "reserved", "move-to-b", "insert-usage", "insert-into-b", "credits"],
)
def test_admins_cannot_touch_balances_or_other_tenants(
    conn: Conn, world: World, sql: str, params: tuple[str, ...]
) -> None:
    """An admin changes limits, never current_usage/reserved, credits or another tenant's quotas."""
    values = {"quota": world.quota_a, "org_a": world.org_a, "org_b": world.org_b}
    args = tuple(values[p] for p in params)
    assert _outcome(conn, "authenticated", world.users["admin_a"], sql, args) == "denied"
    row = conn.execute(
        "select quota_limit, current_usage, reserved from public.usage_quotas where id = %s",
        (world.quota_a,),
    ).fetchone()
    assert row is not None
    assert row[0] == Decimal(10)


FUNCTIONS = {
    "check_quota": "select * from public.check_quota(%(a)s, 'openai', 'gpt-4o', 0.01)",
    "get_quota_status": "select * from public.get_quota_status(%(a)s)",
    "estimate_cost": "select public.estimate_cost('openai', 'gpt-4o', 10, 10)",
    "reserve_quota": "select * from public.reserve_quota(%(a)s, 'fn', 'openai', 'gpt-4o', 0.01)",
    "record_usage": (
        "select * from public.record_usage(organization_id => %(a)s, request_id => 'fn',"
        " provider => 'openai', model => 'gpt-4o', input_tokens => 1)"
    ),
    "release_reservation": "select public.release_reservation(%(a)s, 'a-pending')",
    "expire_reservations": "select public.expire_reservations()",
}
# Letters in FUNCTIONS order: o = callable, d = 42501.
EXPECTED_FUNCTIONS = {
    "anon": "ddddddd",
    "member_a": "ooodddd",
    "admin_a": "ooodddd",
    "owner_b": "ddodddd",  # A's quotas are not theirs: 42501 from the function itself
    "service_role": "ooooooo",
}


@pytest.mark.parametrize("actor", list(EXPECTED_FUNCTIONS))
def test_function_execute_rights(conn: Conn, world: World, actor: str) -> None:
    """check_quota/get_quota_status for members of the organization only; the write
    functions for service_role only; anon can call nothing."""
    role, sub = _actor(world, actor)
    got = {}
    for name, sql in FUNCTIONS.items():
        try:
            with act_as(conn, role, sub=sub, rollback=True) as c:
                c.execute(sql, {"a": world.org_a}).fetchall()
            got[name] = "o"
        except psycopg.errors.InsufficientPrivilege:
            got[name] = "d"
    assert "".join(got.values()) == EXPECTED_FUNCTIONS[actor], got


def test_member_sees_quota_status_of_their_organization(conn: Conn, world: World) -> None:
    """Through get_quota_status / check_quota a member sees A's quota and its balance."""
    with act_as(conn, "authenticated", sub=world.users["member_a"], rollback=True) as c:
        rows = c.execute(
            "select quota_id, current_usage, reserved from public.get_quota_status(%s)",
            (world.org_a,),
        ).fetchall()
        assert rows == [(world.quota_a, Decimal("0.0026"), Decimal("0.01"))]
        allowed = c.execute(
            "select allowed from public.check_quota(%s, 'openai', 'gpt-4o', 100)",
            (world.org_a,),
        ).fetchall()
        assert allowed == [(False,)]
