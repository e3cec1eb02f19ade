"""Organizations and members: the `quotaflow org` / `quotaflow member` commands, and the SQL
rule that an organization keeps an owner whatever path tries to take the last one away."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from quotaflow.cli import main

from tests.db import act_as, new_auth_user

Conn = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
def _database(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("QUOTAFLOW_DATABASE_URL", db_url)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def new_org(conn: Conn, *owners: uuid.UUID, members: tuple[uuid.UUID, ...] = ()) -> str:
    org = str(conn.execute("insert into public.organizations (name) values ('o') returning id")
              .fetchone()[0])  # fmt: skip
    for user, role in [*((o, "owner") for o in owners), *((m, "member") for m in members)]:
        conn.execute(
            "insert into public.organization_members values (%s, %s, %s)", (org, user, role)
        )
    return org


def roles(conn: Conn, org: str) -> dict[str, str]:
    rows = conn.execute(
        "select user_id, role from public.organization_members where organization_id = %s", (org,)
    )
    return {str(u): r for u, r in rows}


# ---------------------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------------------


def test_org_create_with_time_zone_currency_rate_and_owner(
    capsys: pytest.CaptureFixture[str], conn: Conn
) -> None:
    owner = new_auth_user(conn, "owner@example.com")
    code, out, err = run(capsys, "org", "create", "Acme Brasil", "--time-zone",
                         "America/Sao_Paulo", "--currency", "brl", "--rate", "5.40",
                         "--owner", str(owner), "--json")  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert (created["name"], created["time_zone"], created["display_currency"]) == (
        "Acme Brasil", "America/Sao_Paulo", "BRL",
    )  # fmt: skip
    assert (created["owners"], created["members"]) == (1, 1)
    rate = conn.execute("select usd_rate from public.currency_rates where currency = 'BRL'")
    assert rate.fetchone() == (Decimal("5.40"),)

    code, out, _ = run(capsys, "org", "list")
    assert code == 0 and "Acme Brasil" in out and "America/Sao_Paulo" in out


def test_org_create_refuses_bad_input_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], conn: Conn
) -> None:
    code, _, err = run(capsys, "org", "create", "X", "--time-zone", "Mars/Olympus")
    assert code == 1 and "invalid time zone" in err
    code, _, err = run(capsys, "org", "create", "X", "--currency", "XTS")
    assert code == 1 and "--rate" in err
    code, _, err = run(capsys, "org", "create", "X", "--owner", str(uuid.uuid4()))
    assert code == 1 and "no auth user" in err
    assert conn.execute("select count(*) from public.organizations").fetchone() == (0,)


def test_member_add_change_list_and_remove(capsys: pytest.CaptureFixture[str], conn: Conn) -> None:
    ann, bob = new_auth_user(conn, "ann@example.com"), new_auth_user(conn, "bob@example.com")
    code, out, _ = run(capsys, "org", "create", "Team", "--owner", str(ann), "--json")
    org = json.loads(out)["id"]

    code, out, _ = run(capsys, "member", "add", "Team", str(bob), "--role", "admin")
    assert code == 0 and "added" in out
    code, out, _ = run(capsys, "member", "add", org, str(bob), "--role", "owner")
    assert code == 0 and "admin -> owner" in out
    code, out, _ = run(capsys, "member", "list", org, "--json")
    assert [(m["email"], m["role"]) for m in json.loads(out)] == [
        ("ann@example.com", "owner"), ("bob@example.com", "owner"),
    ]  # fmt: skip
    code, out, _ = run(capsys, "member", "remove", org, str(ann))
    assert code == 0 and "removed" in out
    assert roles(conn, org) == {str(bob): "owner"}


def test_the_cli_cannot_remove_or_demote_the_last_owner(
    capsys: pytest.CaptureFixture[str], conn: Conn
) -> None:
    ann = new_auth_user(conn)
    org = new_org(conn, ann)
    code, _, err = run(capsys, "member", "add", org, str(ann), "--role", "member")
    assert code == 1 and "must keep an owner" in err
    code, _, err = run(capsys, "member", "remove", org, str(ann))
    assert code == 1 and "must keep an owner" in err
    assert roles(conn, org) == {str(ann): "owner"}


# ---------------------------------------------------------------------------------------
# The SQL rule, by every path
# ---------------------------------------------------------------------------------------


def test_an_owner_through_rls_cannot_remove_or_demote_every_owner(conn: Conn) -> None:
    """The attack of issue 13: an owner deletes or demotes the other owner, then themselves."""
    ann, bob = new_auth_user(conn), new_auth_user(conn)
    org = new_org(conn, ann, bob)
    with act_as(conn, "authenticated", sub=ann) as c:
        c.execute("delete from public.organization_members where user_id = %s", (bob,))
    for attempt in (
        "delete from public.organization_members where organization_id = %s",
        "update public.organization_members set role = 'admin' where organization_id = %s",
    ):
        with (
            pytest.raises(psycopg.errors.CheckViolation, match="must keep an owner"),
            act_as(conn, "authenticated", sub=ann) as c,
        ):
            c.execute(attempt, (org,))
    assert roles(conn, org) == {str(ann): "owner"}


def test_the_service_role_and_a_bulk_delete_obey_it_too(conn: Conn) -> None:
    ann, bob, carl = new_auth_user(conn), new_auth_user(conn), new_auth_user(conn)
    org = new_org(conn, ann, bob, members=(carl,))
    with pytest.raises(psycopg.errors.CheckViolation), act_as(conn, "service_role") as c:
        c.execute("delete from public.organization_members where role = 'owner'")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("update public.organization_members set organization_id = %s"
                     " where role = 'owner'", (new_org(conn),))  # fmt: skip
    with pytest.raises(psycopg.errors.CheckViolation, match="must keep an owner"):
        conn.execute("delete from auth.users where id in (%s, %s)", (ann, bob))
    assert roles(conn, org) == {str(ann): "owner", str(bob): "owner", str(carl): "member"}


def test_deleting_the_organization_takes_its_owners_with_it(conn: Conn) -> None:
    ann = new_auth_user(conn)
    org = new_org(conn, ann)
    conn.execute("delete from public.organizations where id = %s", (org,))
    assert roles(conn, org) == {}


def test_two_owners_demoting_each_other_at_once_leave_one_owner(db_url: str, conn: Conn) -> None:
    """The second transaction waits for the first and is then refused."""
    ann, bob = new_auth_user(conn), new_auth_user(conn)
    org = new_org(conn, ann, bob)
    first = psycopg.connect(db_url)
    second = psycopg.connect(db_url)
    outcome: list[str] = []
    try:
        first.execute("update public.organization_members set role = 'member' where user_id = %s",
                      (ann,))  # fmt: skip

        def demote_bob() -> None:
            try:
                second.execute(
                    "update public.organization_members set role = 'member' where user_id = %s",
                    (bob,),
                )
                second.commit()
                outcome.append("committed")
            except psycopg.errors.CheckViolation:
                second.rollback()
                outcome.append("refused")

        waiter = threading.Thread(target=demote_bob)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive(), "the second demotion did not wait for the first"
        first.commit()
        waiter.join(10)
    finally:
        first.close()
        second.close()
    assert outcome == ["refused"]
    assert roles(conn, org) == {str(ann): "member", str(bob): "owner"}
