"""Quota alerts: each threshold is recorded and announced once per window, under concurrent
load too; the Python AlertListener turns the announcements into callbacks."""

from __future__ import annotations

import queue
import threading
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from quotaflow import Tracker
from quotaflow.backends import PostgresBackend
from quotaflow.reports.analytics import AlertListener, QuotaAlert

from tests.db import act_as, new_auth_user

D = Decimal
Conn = psycopg.Connection[Any]
WAIT = 10.0


def make_org(conn: Conn) -> str:
    row = conn.execute(
        "insert into public.organizations (name, time_zone) values ('Alerts', 'UTC') returning id"
    ).fetchone()
    assert row is not None
    return str(row[0])


def make_quota(conn: Conn, org: str, limit: Any, **kw: Any) -> str:
    cols = {"organization_id": org, "quota_type": "daily", "metric": "requests", **kw}
    cols["quota_limit"] = D(str(limit))
    names = ", ".join(cols)
    marks = ", ".join(f"%({k})s" for k in cols)
    row = conn.execute(
        f"insert into public.usage_quotas ({names}) values ({marks}) returning id", cols
    ).fetchone()
    assert row is not None
    return str(row[0])


def call(conn: Conn, org: str, rid: str, input_tokens: int = 100) -> None:
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => %s,"
        " provider => 'openai', model => 'gpt-4o', input_tokens => %s)",
        (org, rid, input_tokens),
    )


def alerts(conn: Conn, quota_id: str) -> list[dict[str, Any]]:
    return list(
        conn.cursor(row_factory=dict_row)
        .execute("select * from public.quota_alerts where quota_id = %s order by id", (quota_id,))
        .fetchall()
    )


def test_default_thresholds_are_80_and_100_percent(conn: Conn) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 10)
    row = conn.execute("select alert_thresholds from public.usage_quotas where id = %s", (q,))
    assert row.fetchone() == ([D("0.8"), D("1.0")],)


def test_each_threshold_is_recorded_once_when_usage_reaches_it(conn: Conn) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 10)
    for i in range(7):
        call(conn, org, f"r{i}")
    assert alerts(conn, q) == []
    call(conn, org, "r7")  # 8 of 10
    call(conn, org, "r8")
    call(conn, org, "r9")  # 10 of 10
    call(conn, org, "r10")
    call(conn, org, "r9")  # a replay charges nothing and alerts nothing
    got = alerts(conn, q)
    assert [(a["threshold"], a["usage"], a["quota_limit"]) for a in got] == [
        (D("0.8"), D(8), D(10)),
        (D("1.0"), D(10), D(10)),
    ]
    window = conn.execute(
        "select window_start, reset_at from public.usage_quotas where id = %s", (q,)
    ).fetchone()
    assert {(a["window_start"], a["reset_at"]) for a in got} == {window}
    assert {(str(a["organization_id"]), a["quota_type"], a["metric"]) for a in got} == {
        (org, "daily", "requests")
    }


def test_one_call_past_both_thresholds_records_both(conn: Conn) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 1000, metric="tokens")
    call(conn, org, "big", input_tokens=1500)
    assert [(a["threshold"], a["usage"]) for a in alerts(conn, q)] == [
        (D("0.8"), D(1500)),
        (D("1.0"), D(1500)),
    ]


def test_a_new_window_alerts_again(conn: Conn) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 10)
    # Yesterday's window ended at 10 of 10 (as record_usage would have left it).
    conn.execute(
        "update public.usage_quotas set current_usage = 10,"
        " window_start = date_trunc('day', now()) - interval '1 day',"
        " reset_at = date_trunc('day', now()) where id = %s",
        (q,),
    )
    assert len(alerts(conn, q)) == 2
    for i in range(8):  # the first call rolls the window over to today
        call(conn, org, f"r{i}")
    got = alerts(conn, q)
    assert [(a["threshold"], a["usage"]) for a in got] == [
        (D("0.8"), D(10)),
        (D("1.0"), D(10)),
        (D("0.8"), D(8)),
    ]
    assert got[2]["window_start"] == got[0]["window_start"] + (
        got[0]["reset_at"] - got[0]["window_start"]
    )


def test_custom_and_empty_thresholds(conn: Conn) -> None:
    org = make_org(conn)
    half = make_quota(conn, org, 4, alert_thresholds=[D("0.5")])
    silent = make_quota(conn, org, 4, alert_thresholds=[])
    for i in range(5):
        call(conn, org, f"r{i}")
    assert [(a["threshold"], a["usage"]) for a in alerts(conn, half)] == [(D("0.5"), D(2))]
    assert alerts(conn, silent) == []


@pytest.mark.parametrize("bad", ["{0}", "{-0.5}", "{0.8,null}", "{101}"])
def test_invalid_thresholds_are_refused(conn: Conn, bad: str) -> None:
    org = make_org(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into public.usage_quotas (organization_id, quota_limit, alert_thresholds)"
            " values (%s, 1, %s::numeric[])",
            (org, bad),
        )


def test_an_admin_lowering_the_limit_below_usage_raises_the_alert(conn: Conn) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 10)
    for i in range(5):
        call(conn, org, f"r{i}")
    admin = new_auth_user(conn, "admin@alerts.test")
    member = new_auth_user(conn, "member@alerts.test")
    conn.execute(
        "insert into public.organization_members values (%s, %s, 'admin'), (%s, %s, 'member')",
        (org, admin, org, member),
    )
    with act_as(conn, "authenticated", sub=admin) as c:
        c.execute("update public.usage_quotas set quota_limit = 6 where id = %s", (q,))
    assert [(a["threshold"], a["usage"], a["quota_limit"]) for a in alerts(conn, q)] == [
        (D("0.8"), D(5), D(6))
    ]
    with act_as(conn, "authenticated", sub=admin) as c:
        c.execute("update public.usage_quotas set alert_thresholds = '{0.5}' where id = %s", (q,))
    # A new threshold already passed (5 of 6 > 50%) is recorded at once.
    assert [a["threshold"] for a in alerts(conn, q)] == [D("0.8"), D("0.5")]
    # Members read the organization's alerts; they do not change thresholds or write alerts.
    with act_as(conn, "authenticated", sub=member, rollback=True) as c:
        assert c.execute("select count(*) from public.quota_alerts").fetchone() == (2,)
        assert (
            c.execute(
                "update public.usage_quotas set alert_thresholds = '{0.1}' where id = %s", (q,)
            ).rowcount
            == 0
        )
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(conn, "authenticated", sub=member, rollback=True) as c,
    ):
        c.execute(
            "insert into public.quota_alerts (quota_id, organization_id, window_start, threshold,"
            " quota_type, metric, quota_limit, usage) values (%s, %s, now(), 0.1, 'daily',"
            " 'requests', 1, 1)",
            (q, org),
        )
    outsider = new_auth_user(conn, "outsider@alerts.test")
    with act_as(conn, "authenticated", sub=outsider, rollback=True) as c:
        assert c.execute("select count(*) from public.quota_alerts").fetchone() == (0,)
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(conn, "anon", rollback=True) as c,
    ):
        c.execute("select * from public.quota_alerts")


def test_concurrent_crossing_fires_exactly_once_per_threshold(db_url: str, conn: Conn) -> None:
    """32 threads settle at once past 80% and 100% of a quota: exactly 2 alert rows, 2
    notifications on the channel and 2 callbacks."""
    org = make_org(conn)
    q = make_quota(conn, org, 20)
    received: queue.Queue[QuotaAlert] = queue.Queue()
    listener = AlertListener(db_url)
    listener.add(received.put, organization_id=org)
    raw = psycopg.connect(db_url, autocommit=True)
    raw.execute("listen quotaflow_alerts")
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def settle(i: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                barrier.wait(WAIT)
                call(c, org, f"req-{i}")
        except BaseException as exc:
            errors.append(exc)

    with listener:
        threads = [threading.Thread(target=settle, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        assert errors == []
        got = [received.get(timeout=WAIT), received.get(timeout=WAIT)]
        time.sleep(0.5)  # anything extra would have arrived by now
        assert received.empty()
    notes = list(raw.notifies(timeout=0.5))
    raw.close()

    rows = alerts(conn, q)
    assert [(a["threshold"], a["usage"]) for a in rows] == [(D("0.8"), D(16)), (D("1.0"), D(20))]
    assert len(notes) == 2
    assert sorted((a.threshold, a.usage) for a in got) == [(D("0.8"), D(16)), (D("1.0"), D(20))]
    assert {a.alert_id for a in got} == {a["id"] for a in rows}
    assert all(a.quota_id == q and a.metric == "requests" for a in got)
    assert {a.percent_used for a in got} == {D("80.00"), D("100.00")}


def test_tracker_on_alert_callback_and_reconnect_without_loss_or_duplicates(
    db_url: str, conn: Conn
) -> None:
    org = make_org(conn)
    q = make_quota(conn, org, 4, name="Four calls a day")
    got: queue.Queue[QuotaAlert] = queue.Queue()
    with Tracker(backend=PostgresBackend(db_url)) as tracker:
        tracker.on_alert(got.put, organization_id=org)
        for i in range(4):
            call(conn, org, f"r{i}")
        first = [got.get(timeout=WAIT), got.get(timeout=WAIT)]
        assert [(a.threshold, a.quota_name) for a in first] == [
            (D("0.8"), "Four calls a day"),
            (D("1.0"), "Four calls a day"),
        ]
        # Kill the listener's connection, then cross a threshold of another quota right away:
        # delivered once, by notification or by the catch-up after reconnecting.
        q2 = make_quota(conn, org, 1, metric="requests", quota_type="monthly")
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where application_name = 'quotaflow-alerts' and datname = current_database()"
        )
        call(conn, org, "after-reconnect")
        later = [got.get(timeout=WAIT), got.get(timeout=WAIT)]
        assert sorted(a.threshold for a in later) == [D("0.8"), D("1.0")]
        assert {a.quota_id for a in later} == {q2}
        time.sleep(1.0)
        assert got.empty()
        assert [a.alert_id for a in tracker.get_alerts(org, limit=2)] == sorted(
            (a.alert_id for a in later), reverse=True
        )
        tracker.stop_alerts()
    assert q != q2
