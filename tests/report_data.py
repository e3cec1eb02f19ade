"""A small usage data set with hand-computed report figures (reports, queries, analytics).

Organization A (time zone America/Sao_Paulo, UTC-3 all year; display currency BRL) made six
calls in the report range [2026-01-10, 2026-01-13) UTC and one just outside each end;
organization B one call. Prices are test rows of their own (USD per million tokens), so the
figures do not move when the catalogue does:

    openai    rpt-large  2.00 in / 10.00 out
    openai    rpt-small  0.20 in /  0.80 out
    anthropic rpt-haiku  1.00 in /  5.00 out

 #  occurred_at (UTC)     user  model      in    out   ok  latency  conv tags         cost USD
 1  2026-01-10 09:00      u1    rpt-large  1000   100  y   500      c1   chat         0.003
 2  2026-01-10 15:00      u2    rpt-small  2000   500  y   300      c2   enem         0.0008
 3  2026-01-11 10:00      u1    rpt-haiku  1000  1000  y   1000     c1   chat, enem   0.006
 4  2026-01-12 01:30      u1    rpt-large     0     0  n   200      c1   -            0
 5  2026-01-12 13:00      u2    rpt-large  4000     0  y   700      c3   -            0.008
 6  2026-01-12 14:00      -     rpt-small  1000  1000  y   400      -    -            0.001
 x  2026-01-09 23:59:59   u3    rpt-small   100     0  y   -        -    -            (before)
 x  2026-01-13 00:00      u3    rpt-small   100     0  y   -        -    -            (at end)

Call 4 is on 2026-01-12 in UTC but 2026-01-11 (22:30) in São Paulo. BRL is 5.00 per USD from
2026-01-01 and 6.00 from 2026-01-12 12:00 UTC, so calls 1-4 convert at 5 and 5-6 at 6.
Credits: 1000 per USD (the organizations' default).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from tests.db import PgServer

D = Decimal
ORG_A = "00000000-0000-4000-8000-0000000a0001"
ORG_B = "00000000-0000-4000-8000-0000000b0001"
START = datetime(2026, 1, 10, tzinfo=timezone.utc)
END = datetime(2026, 1, 13, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Call:
    request_id: str
    at: str
    user: str | None
    model: str
    input_tokens: int
    output_tokens: int
    ok: bool
    latency: int | None
    conversation: str | None
    tags: tuple[str, ...]
    cost: Decimal

    @property
    def provider(self) -> str:
        return "anthropic" if self.model == "rpt-haiku" else "openai"


def _call(
    rid: str,
    at: str,
    user: str | None,
    model: str,
    tokens: tuple[int, int],
    ok: bool,
    latency: int | None,
    conversation: str | None,
    tags: str,
    cost: str,
) -> Call:
    """A call on ``2026-01-<at>Z``; tags space-separated."""
    return Call(
        rid, f"2026-01-{at}Z", user, model, tokens[0], tokens[1], ok, latency, conversation,
        tuple(tags.split()), D(cost),
    )  # fmt: skip


CALLS = [
    _call("a1", "10T09:00:00", "u1", "rpt-large", (1000, 100), True, 500, "c1", "chat", "0.003"),
    _call("a2", "10T15:00:00", "u2", "rpt-small", (2000, 500), True, 300, "c2", "enem", "0.0008"),
    _call("a3", "11T10:00:00", "u1", "rpt-haiku", (1000, 1000), True, 1000, "c1", "chat enem",
          "0.006"),
    _call("a4", "12T01:30:00", "u1", "rpt-large", (0, 0), False, 200, "c1", "", "0"),
    _call("a5", "12T13:00:00", "u2", "rpt-large", (4000, 0), True, 700, "c3", "", "0.008"),
    _call("a6", "12T14:00:00", None, "rpt-small", (1000, 1000), True, 400, None, "", "0.001"),
]  # fmt: skip
OUTSIDE = [
    _call("a-before", "09T23:59:59", "u3", "rpt-small", (100, 0), True, None, None, "", "0.00002"),
    _call("a-end", "13T00:00:00", "u3", "rpt-small", (100, 0), True, None, None, "", "0.00002"),
]  # fmt: skip
ORG_B_CALL = _call(
    "b1", "11T12:00:00", "u1", "rpt-large", (1000, 0), True, 100, "c1", "chat", "0.002"
)

# Totals of organization A over [START, END).
TOTAL_COST = D("0.0188")
TOTAL_CREDITS = D("18.8")
TOTAL_DISPLAY = D("0.103")  # (0.003 + 0.0008 + 0.006) * 5 + (0.008 + 0.001) * 6


def record(conn: psycopg.Connection[Any], org: str, call: Call) -> None:
    conn.execute(
        "select * from public.record_usage(organization_id => %s, request_id => %s,"
        " provider => %s, model => %s, input_tokens => %s, output_tokens => %s, success => %s,"
        " user_id => %s, conversation_id => %s, latency_ms => %s, tags => %s,"
        " error_code => %s, occurred_at => %s)",
        (
            org,
            call.request_id,
            call.provider,
            call.model,
            call.input_tokens,
            call.output_tokens,
            call.ok,
            call.user,
            call.conversation,
            call.latency,
            list(call.tags),
            None if call.ok else "rate_limit",
            call.at,
        ),
    )


def load(conn: psycopg.Connection[Any]) -> None:
    """Loads the data set (as the superuser ``postgres``)."""
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok) values ('openai', 'rpt-large', 2.00, 10.00),"
        " ('openai', 'rpt-small', 0.20, 0.80), ('anthropic', 'rpt-haiku', 1.00, 5.00)"
    )
    conn.execute(
        "insert into public.organizations (id, name, time_zone, display_currency) values"
        " (%s, 'Report Org A', 'America/Sao_Paulo', 'BRL'), (%s, 'Report Org B', 'UTC', null)",
        (ORG_A, ORG_B),
    )
    conn.execute(
        "insert into public.currency_rates (currency, usd_rate, effective_from, source) values"
        " ('BRL', 5.00, '2026-01-01T00:00:00Z', 'test'),"
        " ('BRL', 6.00, '2026-01-12T12:00:00Z', 'test')"
    )
    for call in [*CALLS, *OUTSIDE]:
        record(conn, ORG_A, call)
    record(conn, ORG_B, ORG_B_CALL)


@contextmanager
def module_database(template: Any, server: PgServer, suffix: str) -> Iterator[str]:
    """A clone of the session's migrated template (pytest-postgresql's ``qf_template``) for a
    whole test module whose tests only read: cloned once, dropped at the end."""
    name = f"{template.dbname}_{suffix}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template.template_dbname)
            )
        )
    try:
        yield server.url(name)
    finally:
        with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
