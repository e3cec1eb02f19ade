"""Part 3: HTTP functions throughput at 8 and 32 concurrent clients.

Each client is a thread with its own keep-alive connection (kept for the whole part), sending
requests back to back for a fixed time; the figure is successful responses per second.
``track`` records one usage event, ``execute`` makes a whole tracked call against the fake
provider; ``health`` (GET, ``select 1``) measured the same way is the baseline. The server is
``quotaflow.server`` (werkzeug's threaded server, one process) with its default pool of 10
connections.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Any

import httpx
import psycopg

from bench.common import ORG_ID_SQL, Row, median, org_id

ORG_N = 5002


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"insert into public.organizations (id, name) values ({ORG_ID_SQL.format(n=ORG_N)},"
            " 'bench http') on conflict do nothing"
        )
        conn.execute(
            "insert into public.usage_quotas (organization_id, quota_type, metric, quota_limit)"
            " values (%s, 'monthly', 'usd', 1000000000)", (org_id(ORG_N),)
        )


def _request(target: str) -> tuple[str, str, Any]:
    """(method, path, JSON body) of one request to ``target``, with a fresh request_id."""
    org, rid = org_id(ORG_N), f"http-{uuid.uuid4()}"
    if target == "health":
        return "GET", "health", None
    if target == "track":
        return "POST", "track", {
            "organization_id": org, "request_id": rid, "provider": "openai",
            "model": "gpt-4o-mini", "usage": {"input_tokens": 1000, "output_tokens": 180},
            "user_id": "bench-user", "latency_ms": 420,
        }
    return "POST", "execute", {
        "request": {"provider": "openai", "model": "gpt-4o-mini", "max_tokens": 200,
                    "messages": [{"role": "user", "content": "Say something about foxes."}]},
        "context": {"organization_id": org, "request_id": rid, "user_id": "bench-user"},
    }


def _load(http: list[httpx.Client], target: str, seconds: float) -> tuple[float, int]:
    """(successful requests per second, failed requests), one thread per client in ``http``."""
    ok = itertools.count()
    failed = itertools.count()
    start = threading.Barrier(len(http) + 1)

    def client(c: httpx.Client) -> None:
        start.wait()
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            method, path, body = _request(target)
            try:
                status = c.request(method, path, json=body).status_code
            except httpx.HTTPError:
                status = 0
            next(ok if status == 200 else failed)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in http]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return next(ok) / elapsed, next(failed)


def run(functions: tuple[str, str], url: str, *, seconds: float, repeats: int) -> list[Row]:
    setup(url)
    base, key = functions
    headers = {"Authorization": f"Bearer {key}", "apikey": key}
    rows = []
    for clients in (8, 32):
        rps: dict[str, list[float]] = {"health": [], "track": [], "execute": []}
        errors = 0
        with ExitStack() as stack:
            # verify=False: plain HTTP on loopback, and it skips loading CA certificates
            # (30 ms per client).
            http = [stack.enter_context(httpx.Client(base_url=f"{base}/functions/v1/",
                                                     headers=headers, timeout=30, verify=False))
                    for _ in range(clients)]
            if seconds >= 1:  # warm-up: connections, pool, caches (skipped by --smoke)
                _load(http, "execute", 1)
            for i in range(repeats):
                order = list(rps) if i % 2 == 0 else list(reversed(rps))
                for target in order:
                    r, failed = _load(http, target, seconds)
                    rps[target].append(r)
                    errors += failed
        health = median(rps["health"])
        for target in ("track", "execute"):
            value = median(rps[target])
            rows.append(Row(
                part="3 HTTP functions",
                figure=f"{target}, {clients} clients" + (f" ({errors} errors)" if errors else ""),
                value=value,
                unit="req/s",
                baseline=health,
                baseline_label="health req/s",
                ratio=value / health if health else float("nan"),
            ))
    return rows
