"""Part 2: what ``execute_with_tracking`` adds to a provider call.

The same ProviderClient calls the fake provider (its own process, on loopback) bare and through
a Tracker, in alternating pairs so noise lands on both; the figure is the distribution of
(tracked - bare) over the pairs. Backends: Postgres (psycopg pool) without the outbox, the
same with the default outbox (each settle fsynced to a local SQLite file before the database is
tried: what a Tracker does unless told ``outbox=False``), and HTTP (the functions server in its
own process, with a service-role key).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from quotaflow import HttpBackend, PostgresBackend, Tracker
from quotaflow.backends import Backend
from quotaflow.models import AIModelRequest
from quotaflow.providers import ProviderClient

from bench.common import ORG_ID_SQL, Row, median, org_id, percentile
from bench.servers import PROVIDER_KEYS

ORG_N = 5001
REQUEST = AIModelRequest.model_validate({
    "provider": "openai",
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": "Answer briefly."},
                 {"role": "user", "content": "Say something about foxes."}],
    "max_tokens": 200,
})
CONTEXT = {"organization_id": org_id(ORG_N), "user_id": "bench-user"}


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"insert into public.organizations (id, name) values ({ORG_ID_SQL.format(n=ORG_N)},"
            " 'bench latency') on conflict do nothing"
        )
        conn.execute(
            "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
            " values (%s, 'monthly', 'usd', 1000000000)", (org_id(ORG_N),)
        )


def _ms(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def _added(
    backend: Backend, client: ProviderClient, pairs: int, outbox: Path | bool
) -> tuple[list[float], list[float]]:
    """(tracked - bare, bare) in ms for each pair, after a warm-up."""
    tracker = Tracker(backend=backend, providers=client, outbox=outbox)
    try:
        def bare() -> None:
            client.complete(REQUEST)

        def tracked() -> None:
            tracker.execute_with_tracking(REQUEST, CONTEXT)

        for _ in range(max(10, pairs // 10)):
            bare()
            tracked()
        diffs, bares = [], []
        for i in range(pairs):
            if i % 2:
                t, b = _ms(tracked), _ms(bare)
            else:
                b, t = _ms(bare), _ms(tracked)
            diffs.append(t - b)
            bares.append(b)
        return diffs, bares
    finally:
        tracker.close()


def run(url: str, fake_url: str, functions: tuple[str, str] | None, *, pairs: int) -> list[Row]:
    setup(url)
    base_urls = {"openai": f"{fake_url}/v1", "xai": f"{fake_url}/v1",
                 "anthropic": fake_url, "google": fake_url}
    keys = {"openai": PROVIDER_KEYS["OPENAI_API_KEY"]}
    scratch = Path(tempfile.mkdtemp(prefix="qf-bench-outbox-"))
    backends: list[tuple[str, Callable[[], Backend], float, Path | bool]] = [
        ("Postgres backend", lambda: PostgresBackend(url, max_size=2), 2.0, False),
        ("Postgres backend, default outbox", lambda: PostgresBackend(url, max_size=2), 2.0,
         scratch / "outbox.sqlite3"),
    ]
    if functions is not None:
        backends.append(("HTTP backend", lambda: HttpBackend(*functions), 6.0, False))
    rows = []
    with ProviderClient(api_keys=keys, base_urls=base_urls) as client:
        for label, make, limit, outbox in backends:
            diffs, bares = _added(make(), client, pairs, outbox)
            bare50, bare99 = median(bares), percentile(bares, 99)
            for p, bare_p, target in ((50, bare50, ("value", "<=", limit)), (99, bare99, None)):
                added = median(diffs) if p == 50 else percentile(diffs, p)
                rows.append(Row(
                    part="2 added latency",
                    figure=f"{label}, p{p} of tracked-bare ({pairs} pairs)",
                    value=added,
                    unit="ms",
                    baseline=bare_p,
                    baseline_label=f"bare call p{p}",
                    ratio=(bare_p + added) / bare_p,
                    target=target,
                    why=("reserve then settle: two round trips, each running its SQL function"
                         " (see the part 1 profile) and a synchronous commit, plus the"
                         " client's own work (pydantic, psycopg)"
                         + ("; and the settle's fsynced outbox insert and its delete"
                            if outbox else "")
                         if label.startswith("Postgres") else
                         "two HTTP round trips (reserve, track) through werkzeug, Flask and"
                         " pydantic, each also running the SQL"),
                ))
    return rows
