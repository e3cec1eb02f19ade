"""The offline demo: the whole system on this machine, narrated.

    quotaflow demo [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
                   [--db-name quotaflow_demo] [--keep]

Creates a fresh database (``--db-name``, default ``quotaflow_demo``: an existing database of
that name is DROPPED) with the Supabase bootstrap, quotaflow's migrations (the Supabase CLI if
installed, else psycopg) and the demo seed, starts the fake providers (or uses the real ones
for every provider whose API key is set), starts the HTTP functions on loopback, then plays a
scenario: a call to each provider, a stream, a provider failure, concurrent calls racing for
the last of a quota, a refusal with its reason, a duplicate retry charged once, a call
through the HTTP functions; prints the usage report and quota status, names the dashboard
URL and stops everything it started (``--keep`` serves until Ctrl-C instead).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ._resources import read_text
from .errors import ProviderError, QuotaExceededError
from .models import Usage
from .providers import ProviderClient, RetryPolicy
from .testing import FakeProviderServer
from .tracker import Tracker

ORG = "00000000-0000-4000-8000-00000000a11c"
KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "google": "GEMINI_API_KEY",
    "xai": "XAI_API_KEY",
}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
    "xai": "grok-3-mini",
}
DEMO_USAGE = Usage(
    input_tokens=1200, output_tokens=280, cached_input_tokens=512, reasoning_tokens=64
)


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say()
    say(f"── {n}. {title} " + "─" * max(0, 70 - len(title)))


def create_database(admin_url: str, name: str) -> str:
    """A fresh database with the Supabase bootstrap, migrations and the demo seed; says each
    step as it goes."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        say(f"  dropping database {name} if it exists, creating it")
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'create database "{name}"')
    url = _with_db(admin_url, name)
    from .migrations import apply

    say("  Supabase bootstrap (roles, auth schema) and quotaflow's migrations:")
    apply(url, bootstrap_first=True, echo=lambda line: say(f"    {line}"))
    with psycopg.connect(url, autocommit=True) as conn:
        say("  demo seed (an organization, quotas, prices)")
        conn.execute(read_text("_sql", "seed.sql").encode())
    return url


@contextmanager
def providers() -> Iterator[tuple[ProviderClient, FakeProviderServer | None]]:
    """Real providers for every key set in the environment, the fake one for the rest."""
    real = {p for p, env in KEY_ENV.items() if os.environ.get(env)}
    with ExitStack() as stack:
        fake: FakeProviderServer | None = None
        base_urls: dict[str, str] = {}
        keys: dict[str, str] = {}
        if len(real) < len(KEY_ENV):
            fake = stack.enter_context(FakeProviderServer(usage=DEMO_USAGE))
            for p in set(KEY_ENV) - real:
                base_urls[p] = fake.url + ("/v1" if p in ("openai", "xai") else "")
                keys[p] = "demo-key"
        client = ProviderClient(
            api_keys=keys,
            base_urls=base_urls,
            retry=RetryPolicy(initial_delay=0.05, max_delay=0.2, max_attempts=3, deadline=10),
        )
        stack.callback(client.close)
        yield client, fake


def _ask(provider: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": MODELS[provider],
        "max_tokens": 300,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def scenario(
    tracker: Tracker,
    fake: FakeProviderServer | None,
    conn: psycopg.Connection[Any],
    functions_url: str | None,
    service_key: str,
) -> None:
    ctx = {"organization_id": ORG, "user_id": "demo-user", "session_id": "demo-session"}

    step(1, "One call to each provider")
    for provider in MODELS:
        r = tracker.execute_with_tracking(_ask(provider, "Name one fox species."), ctx)
        say(
            f"  {provider:<9} {r.model:<18} {r.usage.input_tokens:>5} in "
            f"({r.usage.cached_input_tokens} cached) {r.usage.output_tokens:>4} out   "
            f"${r.cost:<10} {r.credits} credits   {r.latency_ms} ms"
        )

    step(2, "A streaming call (text arrives as it is generated)")
    stream = tracker.execute_with_tracking(
        _ask("anthropic", "Tell a short story.", stream=True), ctx
    )
    sys.stdout.write("  ")
    for chunk in stream:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    say()
    assert stream.response is not None
    say(
        f"  settled from the stream's own usage events: {stream.response.usage.total_tokens} "
        f"tokens, ${stream.response.cost}"
    )

    step(3, "A provider failure is logged and its reservation released")
    if fake is not None:
        fake.fail_next(500, times=3)
    try:
        tracker.execute_with_tracking(
            _ask("google", "This one fails.", model="gemini-2.5-pro"),
            {**ctx, "request_id": "demo-failure"},
        )
        say("  (a real provider answered; no failure to show)")
    except ProviderError as exc:
        row = conn.execute(
            "select success, error_code from public.api_usage_logs where request_id = %s",
            ("demo-failure",),
        ).fetchone()
        say(
            f"  ProviderError: status {exc.status}, retryable={exc.retryable} "
            f"(after 3 attempts with backoff)"
        )
        say(f"  failure row: success, error_code = {row}")

    step(4, "Eight concurrent calls race for the last of a quota")
    conn.execute(
        "insert into public.usage_quotas (organization_id, name, user_id, quota_type, quota_limit)"
        " values (%s, 'racer daily spend', 'racer', 'daily', 0.0025)",
        (ORG,),
    )
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        try:
            tracker.execute_with_tracking(
                _ask("openai", "Quick!", max_tokens=1000),
                {"organization_id": ORG, "user_id": "racer"},
            )
            outcomes.append("admitted")
        except QuotaExceededError:
            outcomes.append("refused")

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = conn.execute(
        "select current_usage, reserved from public.usage_quotas where user_id = 'racer'"
    ).fetchone()
    say(
        f"  quota $0.0025, each call reserves up to ~$0.0006: {outcomes.count('admitted')} "
        f"admitted, {outcomes.count('refused')} refused"
    )
    usage, held = used or ("?", "?")
    say(f"  used ${usage}, still held ${held}: never overspent")

    step(5, "A refusal and its reason")
    try:
        tracker.execute_with_tracking(
            _ask("openai", "A long essay, please.", max_tokens=4000),
            {"organization_id": ORG, "user_id": "racer"},
        )
        say("  (admitted: the quota still had room)")
    except QuotaExceededError as exc:
        say(f"  {exc}")
        say(
            f"  quota_type={exc.quota_type} limit={exc.quota_limit} used={exc.current_usage} "
            f"remaining={exc.remaining} resets {exc.reset_at}"
        )

    step(6, "A retry with the same request_id is charged once")
    rid = f"demo-retry-{uuid.uuid4().hex[:8]}"
    first = tracker.execute_with_tracking(_ask("xai", "Hello!"), {**ctx, "request_id": rid})
    again = tracker.execute_with_tracking(_ask("xai", "Hello!"), {**ctx, "request_id": rid})
    rows = conn.execute(
        "select count(*) from public.api_usage_logs where request_id = %s", (rid,)
    ).fetchone()
    say(
        f"  first: ${first.cost} (log {first.log_id}); retry: duplicate={again.duplicate}, "
        f"log rows for {rid}: {rows[0] if rows else 0}"
    )

    if functions_url:
        step(7, "The same through the HTTP functions (what supabase-py's functions.invoke calls)")
        import httpx

        headers = {"Authorization": f"Bearer {service_key}"}
        body = _ask("openai", "Hi over HTTP")
        resp = httpx.post(
            f"{functions_url}/execute",
            headers=headers,
            timeout=30,
            json={"request": body, "context": ctx},
        )
        data = resp.json()
        say(
            f"  POST /functions/v1/execute -> {resp.status_code}: cost {data.get('cost')}, "
            f"tokens {data.get('usage', {}).get('input_tokens')} in"
        )

    step(8, "Usage report (SQL) and quota status")
    rows = conn.execute(
        "select provider, model, count(*), sum(total_tokens), sum(cost_usd),"
        " count(*) filter (where not success)"
        " from public.api_usage_logs where organization_id = %s group by 1, 2 order by 5 desc",
        (ORG,),
    ).fetchall()
    say(f"  {'provider':<10}{'model':<20}{'calls':>6}{'tokens':>9}{'cost USD':>14}{'failed':>8}")
    for p, m, n, tok, cost, failed in rows:
        say(f"  {p:<10}{m:<20}{n:>6}{tok:>9}{cost:>14}{failed:>8}")
    total = sum((r[4] for r in rows), Decimal(0))
    say(f"  {'total':<30}{sum(r[2] for r in rows):>6}{'':>9}{total:>14}")
    say()
    for q in tracker.get_quota_status(ORG):
        scope = q.user_id or q.model or "organization"
        say(
            f"  {q.quota_type:<8}{q.metric:<9}{scope:<14} {q.current_usage:>12} / "
            f"{q.quota_limit:<10} {q.percent_used:>6}%  resets {q.reset_at}"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (``quotaflow demo`` and ``python -m quotaflow.demo``)."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "QUOTAFLOW_DEMO_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a server where the demo may create its database (default: local postgres)",
    )
    parser.add_argument(
        "--db-name",
        default="quotaflow_demo",
        help="the database the demo creates; an existing one of that name is dropped first"
        " (default quotaflow_demo)",
    )
    parser.add_argument("--port", type=int, default=0, help="port of the functions (0: any)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the functions and dashboard running until Ctrl-C"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quotaflow.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Plays the demo with parsed options."""
    say("quotaflow demo — track, price and cap AI calls; everything runs on this machine")
    server_name = urlsplit(args.database_url).hostname or "the local server"
    say(
        f"setting up database {args.db_name} on {server_name}: this drops any existing database"
        f" named {args.db_name} (choose another with --db-name)"
    )
    url = create_database(args.database_url, args.db_name)
    service_key = "demo-service-" + secrets.token_urlsafe(16)
    with ExitStack() as stack, providers() as (client, fake):
        say(
            "providers: "
            + ("fake (loopback, real wire formats)" if fake else "real")
            + "; set OPENAI_API_KEY etc. to use real ones"
        )
        from .server import LocalServer

        server = stack.enter_context(
            LocalServer(
                port=args.port,
                database_url=url,
                config={
                    "SUPABASE_SERVICE_ROLE_KEY": service_key,
                    **(
                        {
                            "QUOTAFLOW_OPENAI_BASE_URL": fake.url + "/v1",
                            "OPENAI_API_KEY": "demo-key",
                        }
                        if fake
                        else {}
                    ),
                },
            )
        )
        say(f"functions: {server.functions_url}/<name>")
        outbox = Path(tempfile.mkdtemp(prefix="quotaflow-demo-")) / "outbox.sqlite3"
        tracker = stack.enter_context(Tracker(database_url=url, providers=client, outbox=outbox))
        with psycopg.connect(url, autocommit=True) as conn:
            scenario(tracker, fake, conn, server.functions_url, service_key)
        say()
        dashboard = f"{server.functions_url}/dashboard?organization_id={ORG}"
        if args.keep:
            # The demo's throwaway service key, so the page can be opened as it is.
            say(f"dashboard: {dashboard}#access_token={service_key}")
        else:
            say(f"dashboard: {dashboard}  (run with --keep to open it)")
        if args.keep:
            say("serving until Ctrl-C ...")
            with suppress(KeyboardInterrupt):
                threading.Event().wait()
    say("stopped the functions and the fake providers; the demo database stays for inspection:")
    say(f"  psql {url} -c \"select * from check_quota('{ORG}', 'openai', 'gpt-4', 0.01)\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
