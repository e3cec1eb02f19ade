"""The usage dashboard (``/functions/v1/dashboard``): the page is a data-free shell served to
anyone, its JSON view is authorized like every other target and equals a hand computation,
and in a real headless Chromium (Debian's ``chromium`` driven by Playwright) the seeded
organization's chart, quota bars and recent calls render — saved to ``artifacts/dashboard.png``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect, sync_playwright
from quotaflow.server import LocalServer
from quotaflow.server.auth import create_api_key

from tests.db import REPO_ROOT
from tests.functions_support import (
    SERVICE_ROLE_KEY,
    Conn,
    World,
    add_quota,
    app_for,
    bearer,
    function_config,
    make_org,
    user_jwt,
    world,
)

__all__ = ["world"]  # fixtures

D = Decimal
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO_ROOT / "artifacts" / "dashboard.png"
SEEDED_ORG = "00000000-0000-4000-8000-00000000a11c"
SEEDED_TZ = ZoneInfo("America/Sao_Paulo")

PRICES = {  # USD per million tokens (input, output), from the pricing catalogue
    "gpt-4o-mini": (D("0.15"), D("0.60")),
    "gemini-2.5-flash": (D("0.30"), D("2.50")),
    "claude-sonnet-4-5": (D("3.00"), D("15.00")),
    "gpt-4o": (D("2.50"), D("10.00")),
}
PROVIDER = {
    "gpt-4o-mini": "openai",
    "gpt-4o": "openai",
    "gemini-2.5-flash": "google",
    "claude-sonnet-4-5": "anthropic",
}


@dataclass(frozen=True)
class Call:
    request_id: str
    at: datetime
    model: str
    user: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    success: bool = True
    error_code: str | None = None
    error_message: str | None = None

    @property
    def cost(self) -> Decimal:
        """Tokens × list price, by hand."""
        price_in, price_out = PRICES[self.model]
        return (price_in * self.input_tokens + price_out * self.output_tokens) / 10**6


def record(conn: Conn, org: str, call: Call) -> None:
    """Settles ``call`` with ``record_usage`` and checks the database priced it as by hand."""
    row = conn.execute(
        "select cost_usd from public.record_usage(organization_id => %s, request_id => %s,"
        " provider => %s, model => %s, input_tokens => %s, output_tokens => %s,"
        " success => %s, user_id => %s, error_code => %s, error_message => %s,"
        " latency_ms => 420, occurred_at => %s)",
        (
            org,
            call.request_id,
            PROVIDER[call.model],
            call.model,
            call.input_tokens,
            call.output_tokens,
            call.success,
            call.user,
            call.error_code,
            call.error_message,
            call.at,
        ),
    ).fetchone()
    assert row is not None and row[0] == call.cost, (call, row)


def local_noon(tz: ZoneInfo, days_ago: int) -> datetime:
    day = datetime.now(tz).date() - timedelta(days=days_ago)
    return datetime.combine(day, time(12), tz)


def dashboard(world: World, as_: str | None, **params: Any) -> Any:
    client = app_for("dashboard", function_config(world.db_url)).test_client()
    return client.get("/", query_string=params, headers=bearer(as_))


# ---------------------------------------------------------------------------------------
# The page and the JSON view through the test client
# ---------------------------------------------------------------------------------------


def test_the_page_is_served_to_anyone_and_holds_no_organization_data(world: World) -> None:
    """200 text/html without a credential; the same bytes for any organization; nothing to
    fetch from elsewhere; its CSP admits exactly its own inline script and style."""
    r = dashboard(world, None, organization_id=world.org)
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    other = dashboard(world, None, organization_id=world.other_org).get_data(as_text=True)
    assert page == other
    for secret in ("Acme", "Other Inc", world.org, world.other_org, world.api_key):
        assert secret not in page
    (script,) = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp
    assert dashboard(world, None, organization_id="not-a-uuid").status_code == 400


def test_the_json_view_is_authorized_like_the_other_targets(world: World) -> None:
    """401 without or with a bad credential, 403 for another organization's member or key,
    200 for the service role, the organization's key and its members; 404 unknown org."""
    cases = [
        (None, 401),
        ("not-a-token", 401),
        (world.revoked_api_key, 401),
        (user_jwt(world.stranger), 403),
        (world.other_api_key, 403),
        (SERVICE_ROLE_KEY, 200),
        (world.api_key, 200),
        (user_jwt(world.member), 200),
        (user_jwt(world.owner), 200),
    ]
    for token, status in cases:
        r = dashboard(world, token, organization_id=world.org, format="json")
        assert r.status_code == status, (token, r.get_json())
        if status == 401:
            assert "Bearer" in r.headers["WWW-Authenticate"]
            assert r.get_json()["error"]["code"] == "unauthorized"
        elif status == 403:
            assert r.get_json()["error"]["code"] == "forbidden"
        else:
            assert r.get_json()["name"] == "Acme"
            assert r.headers["Cache-Control"] == "no-store"
    unknown = "00000000-0000-4000-8000-000000000000"
    r = dashboard(world, SERVICE_ROLE_KEY, organization_id=unknown, format="json")
    assert r.status_code == 404


def test_the_json_view_equals_a_hand_computation(world: World, conn: Conn) -> None:
    """Days are São Paulo's (UTC-3): the 30-day window's first and last local day count, the
    day before does not; a call at 23:30 local lands on its local day; per model, per user,
    quotas (usage, reservation, reset at local midnight) and the recent calls, newest first."""
    tz = ZoneInfo("America/Sao_Paulo")
    conn.execute(
        "update public.organizations set time_zone = %s where id = %s", (str(tz), world.org)
    )
    quota = add_quota(conn, world.org, "2.00", name="Daily spend", metric="usd")
    today = datetime.now(tz).date()
    now = datetime.now(timezone.utc)

    def local(days_ago: int, hh: int, mm: int) -> datetime:
        return datetime.combine(today - timedelta(days=days_ago), time(hh, mm), tz)

    calls = [
        # first day of the window, 00:30 local: $0.15
        Call("a", local(29, 0, 30), "gpt-4o-mini", "u1", input_tokens=1_000_000),
        # the day before the window, 23:30 local: outside every figure but the recent calls
        Call("b", local(30, 23, 30), "gpt-4o-mini", "u1", input_tokens=1_000_000),
        # 23:30 local is 02:30 UTC of the next day: $0.30 + $0.15 on local day -5
        Call("c", local(5, 23, 30), "claude-sonnet-4-5", "u2", 100_000, 10_000),
        Call("d", local(5, 10, 0), "gpt-4o-mini", "u1", output_tokens=1_000_000),  # $0.60
        Call("g", local(12, 12, 0), "gpt-4o-mini", None, input_tokens=100_000),  # $0.015
        Call("e", now - timedelta(minutes=2), "gpt-4o-mini", "u2", 200_000, 100_000),  # $0.09
        Call(
            "f",
            now - timedelta(minutes=1),
            "claude-sonnet-4-5",
            success=False,
            error_code="rate_limited",
            error_message="429 Too Many Requests",
        ),
    ]
    for call in calls:
        record(conn, world.org, call)
    conn.execute(
        "select * from public.reserve_quota(%s, 'pending-1', 'openai', 'gpt-4o-mini', 0.10)",
        (world.org,),
    )

    r = dashboard(world, SERVICE_ROLE_KEY, organization_id=world.org, format="json")
    assert r.status_code == 200, r.get_json()
    data = r.get_json()
    assert (data["name"], data["time_zone"], data["days"]) == ("Acme", str(tz), 30)

    day_of_e = calls[5].at.astimezone(tz).date()  # today, unless run within 2 min of midnight
    expected_daily: dict[date, Decimal] = {today - timedelta(days=n): D(0) for n in range(30)}
    expected_daily[today - timedelta(days=29)] += D("0.15")
    expected_daily[today - timedelta(days=5)] += D("0.45") + D("0.60")
    expected_daily[today - timedelta(days=12)] += D("0.015")
    expected_daily[day_of_e] += D("0.09")
    assert [p["date"] for p in data["daily"]] == [d.isoformat() for d in sorted(expected_daily)]
    assert {date.fromisoformat(p["date"]): D(p["cost_usd"]) for p in data["daily"]} == (
        expected_daily
    )
    assert D(data["totals"]["cost_usd"]) == D("1.305")
    assert (data["totals"]["requests"], data["totals"]["failed_requests"]) == (6, 1)
    assert datetime.fromisoformat(data["period"]["start"]) == local(29, 0, 0)
    assert datetime.fromisoformat(data["period"]["end"]) == local(-1, 0, 0)

    by_model = {
        (g["provider"], g["model"]): (g["requests"], g["failed_requests"], D(g["cost_usd"]))
        for g in data["by_model"]
    }
    assert by_model == {
        ("openai", "gpt-4o-mini"): (4, 0, D("0.855")),
        ("anthropic", "claude-sonnet-4-5"): (2, 1, D("0.45")),
    }
    assert [g["model"] for g in data["by_model"]] == ["gpt-4o-mini", "claude-sonnet-4-5"]
    by_user = {
        g["user_id"]: (g["requests"], g["failed_requests"], D(g["cost_usd"]))
        for g in data["by_user"]
    }
    assert by_user == {
        "u1": (2, 0, D("0.75")),
        "u2": (2, 0, D("0.54")),
        None: (2, 1, D("0.015")),
    }

    (q,) = data["quotas"]
    assert q["quota_id"] == quota and q["name"] == "Daily spend"
    # Every settle charges the current window, whatever the call's own time: 1.305 + 0.15.
    assert D(q["current_usage"]) == D("1.455") and D(q["quota_limit"]) == D("2.00")
    assert D(q["reserved"]) == D("0.10") and D(q["percent_used"]) == D("72.75")
    assert datetime.fromisoformat(q["reset_at"]) == local(-1, 0, 0)

    recent = data["recent_calls"]
    assert [c["request_id"] for c in recent] == ["f", "e", "c", "d", "g", "a", "b"]
    failed = recent[0]
    assert failed["success"] is False and failed["error_code"] == "rate_limited"
    assert (failed["user_id"], failed["provider"], D(failed["cost_usd"])) == (
        None,
        "anthropic",
        D(0),
    )
    assert (recent[1]["user_id"], recent[1]["total_tokens"], D(recent[1]["cost_usd"])) == (
        "u2",
        300_000,
        D("0.09"),
    )


def test_recent_calls_are_the_twenty_newest(world: World, conn: Conn) -> None:
    now = datetime.now(timezone.utc)
    for i in range(25):
        at = now - timedelta(minutes=i)
        record(conn, world.org, Call(f"r{i:02}", at, "gpt-4o-mini", "u", input_tokens=1000))
    r = dashboard(world, world.api_key, organization_id=world.org, format="json")
    assert [c["request_id"] for c in r.get_json()["recent_calls"]] == [
        f"r{i:02}" for i in range(20)
    ]


# ---------------------------------------------------------------------------------------
# In a real browser: Debian's chromium, driven by Playwright
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's chromium"
            " (`apt-get install -y chromium`; scripts/setup.sh installs it)",
            pytrace=False,
        )

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def seeded_calls() -> list[Call]:
    """Spend on 26 of the last 30 days (none 4, 11, 19 and 26 days ago), three models and
    users; demo-user spends $0.78 of their $1.00 daily quota (amber); the organization's
    $10.00 daily quota reaches 94% (red); two calls today failed."""
    now = datetime.now(timezone.utc)
    models = ["claude-sonnet-4-5", "gpt-4o-mini", "gemini-2.5-flash"]
    users = ["alice", "bob", "carol"]
    units = {  # tokens per step (input, output): $8.6275 over the 26 days
        "claude-sonnet-4-5": (15_000, 3_750),
        "gpt-4o-mini": (200_000, 20_000),
        "gemini-2.5-flash": (200_000, 20_000),
    }
    calls = []
    for day in range(30):
        if day in (4, 11, 19, 26):
            continue
        model = models[day % 3]
        unit_in, unit_out = units[model]
        at = now - timedelta(minutes=10) if day == 0 else local_noon(SEEDED_TZ, day)
        calls.append(
            Call(
                f"day-{day}",
                at,
                model,
                users[day % 3],
                input_tokens=unit_in * (day % 7 + 2),
                output_tokens=unit_out * (day % 5 + 1),
            )
        )
    for n, day in enumerate((0, 2, 8, 15)):  # $0.195 each
        at = now - timedelta(minutes=8) if day == 0 else local_noon(SEEDED_TZ, day)
        calls.append(Call(f"demo-{n}", at, "claude-sonnet-4-5", "demo-user", 50_000, 3_000))
    calls.append(
        Call(
            "failed-1",
            now - timedelta(minutes=5),
            "gpt-4o",
            "bob",
            success=False,
            error_code="provider_error",
            error_message="upstream 503: model overloaded",
        )
    )
    calls.append(
        Call(
            "failed-2",
            now - timedelta(minutes=3),
            "claude-sonnet-4-5",
            "carol",
            success=False,
            error_code="rate_limited",
            error_message="429 Too Many Requests <script>alert(1)</script>",
        )
    )
    return calls


def test_the_dashboard_renders_in_chromium(
    browser: Any, seeded_db_url: str, seeded_conn: Conn
) -> None:
    """The seeded organization in a real browser: one bar per day of the last 30 with the
    day's spend, the 30-day total, quota bars green/amber/red, failed calls marked; nothing
    requested outside the server, no script error, the token gone from the address bar."""
    calls = seeded_calls()
    for call in calls:
        record(seeded_conn, SEEDED_ORG, call)
    total = sum((c.cost for c in calls), D(0))
    assert total == D("9.4075")  # the organization's daily $10.00 quota at 94%
    per_day: dict[str, Decimal] = {}
    for c in calls:
        day = c.at.astimezone(SEEDED_TZ).date().isoformat()
        per_day[day] = per_day.get(day, D(0)) + c.cost

    config = {"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY}
    with LocalServer(port=0, database_url=seeded_db_url, config=config) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests: list[str] = []
        problems: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        url = f"{server.functions_url}/dashboard?organization_id={SEEDED_ORG}"
        page.goto(f"{url}#access_token={SERVICE_ROLE_KEY}")
        page.wait_for_selector("[data-testid=spend-chart] .day-bar", state="attached")

        assert page.locator("#org-name").inner_text() == "Acme Learning"
        bars = page.locator("[data-testid=spend-chart] .day-bar")
        assert bars.count() == 30
        drawn = bars.evaluate_all(
            "els => els.map(e => [e.dataset.date, e.dataset.cost, +e.getAttribute('height')])"
        )
        assert {day: D(cost) for day, cost, _ in drawn if D(cost) > 0} == per_day
        assert len(per_day) == 26 and sum(1 for *_, height in drawn if height > 0) == 26

        spend = page.locator("[data-testid=total-spend]")
        assert D(spend.get_attribute("data-value") or "") == total
        assert spend.inner_text() == f"${total.quantize(D('0.01'))}"

        quota_bars = page.locator("[data-testid=quota-bar]")
        assert quota_bars.count() == 5
        levels = [
            next(c for c in ("ok", "warn", "danger") if c in (cls or "").split())
            for cls in quota_bars.evaluate_all("els => els.map(e => e.className)")
        ]
        assert sorted(levels) == ["danger", "ok", "ok", "ok", "warn"]
        danger = page.locator("[data-testid=quota-bar].danger")
        assert danger.get_attribute("aria-label") == "Organization daily spend"
        warn = page.locator("[data-testid=quota-bar].warn")
        assert warn.get_attribute("aria-label") == "Per-user daily spend (demo-user)"
        assert page.locator("[data-testid=quota-reset]").first.inner_text().startswith("resets ")

        rows = page.locator("[data-testid=recent-calls] tbody tr")
        assert rows.count() == 20
        failed = page.locator("[data-testid=recent-calls] tr.failed")
        assert failed.count() == 2
        assert "rate_limited" in failed.first.inner_text()
        assert "<script>alert(1)</script>" in failed.first.inner_text()  # shown, not run

        assert page.locator("[data-testid=by-model] tbody tr").count() == 4
        assert "access_token" not in page.url
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()
    assert SCREENSHOT.stat().st_size > 10_000
    assert all(u.startswith(server.url + "/") for u in requests), requests
    assert not problems, problems


def test_unpriced_calls_are_shown_as_unpriced(browser: Any, world: World, conn: Conn) -> None:
    """A call of a model without a price: its tokens are in the totals, its cost is not;
    the JSON view counts it and the page says so, and lists it as unpriced."""
    record(conn, world.org, Call("priced", local_noon(ZoneInfo("UTC"), 0), "gpt-4o", None, 1000))
    conn.execute(
        "select * from public.record_usage(%s, 'unpriced', 'openai', 'gpt-9-preview-x',"
        " input_tokens => 500, output_tokens => 50)",
        (world.org,),
    )
    body = dashboard(world, SERVICE_ROLE_KEY, organization_id=world.org, format="json").get_json()
    assert body["totals"]["unpriced_requests"] == 1
    assert body["totals"]["total_tokens"] == 1550
    assert D(body["totals"]["cost_usd"]) == D("0.0025")
    unpriced = next(c for c in body["recent_calls"] if c["request_id"] == "unpriced")
    assert unpriced["unpriced"] is True

    config = {"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY}
    with LocalServer(port=0, database_url=world.db_url, config=config) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        url = f"{server.functions_url}/dashboard?organization_id={world.org}"
        page.goto(f"{url}#access_token={SERVICE_ROLE_KEY}")
        page.wait_for_selector("[data-testid=unpriced-note]:not([hidden])")
        note = page.locator("[data-testid=unpriced-note]").inner_text()
        assert note.startswith("1 call of a model without a price")
        row = page.locator("[data-testid=recent-calls] tr[data-request-id=unpriced]")
        assert "unpriced" in row.inner_text()
        page.close()


def test_the_page_asks_for_a_token_and_explains_a_refusal(
    browser: Any, seeded_db_url: str, seeded_conn: Conn
) -> None:
    """Without a token the form shows; a bad token is a clear 401, another organization's key
    a clear 403; the service-role key typed into the form opens the dashboard."""
    _, other_key = create_api_key(seeded_conn, make_org(seeded_conn, "Other Inc"), "other")
    config = {"SUPABASE_SERVICE_ROLE_KEY": SERVICE_ROLE_KEY}
    with LocalServer(port=0, database_url=seeded_db_url, config=config) as server:
        page = browser.new_page()
        page.goto(f"{server.functions_url}/dashboard?organization_id={SEEDED_ORG}")
        page.wait_for_selector("#token-form", state="visible")
        status = page.locator("#status")
        for token, code in (("not-a-valid-token", "401"), (other_key, "403")):
            page.fill("#token-input", token)
            page.click("#token-form button[type=submit]")
            expect(status).to_have_text(re.compile(f"^{code} "))
            assert page.locator("#dashboard").is_hidden()
            assert page.locator("#token-form").is_visible()
            assert "error" in (status.get_attribute("class") or "")
        page.fill("#token-input", SERVICE_ROLE_KEY)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("[data-testid=spend-chart] .day-bar", state="attached")
        assert page.locator("#org-name").inner_text() == "Acme Learning"
        assert page.locator("[data-testid=spend-chart] .day-bar").count() == 30
        assert page.locator(".empty-note").text_content() == "No spend in this period"
        assert page.evaluate("sessionStorage.getItem('quotaflow.dashboard.token')") == (
            SERVICE_ROLE_KEY
        )
        page.close()
