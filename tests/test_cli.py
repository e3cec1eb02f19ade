"""The ``quotaflow`` command line against a real database, through ``main([...])``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from quotaflow.cli import build_parser, main

from tests import report_data as rd

D = Decimal
FIXTURE = Path(__file__).parent / "fixtures" / "litellm_prices.json"
Conn = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
def _no_ambient_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUOTAFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _commands() -> list[list[str]]:
    """Every command path of the parser, e.g. ["quota", "set"]."""
    import argparse

    paths: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "quotaflow")
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], path: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: quotaflow" + "".join(" " + p for p in path))


def test_help_lists_every_command() -> None:
    names = {" ".join(p) for p in _commands()}
    assert names >= {
        "migrate", "serve", "quota set", "quota list", "pricing list", "pricing import",
        "pricing reprice", "pricing sync",
        "report", "export", "keys create", "keys revoke", "outbox status", "outbox flush",
        "supabase install", "org create", "org list", "member add", "member remove",
        "member list", "demo",
    }  # fmt: skip


def test_installed_console_script_prints_help() -> None:
    script = shutil.which("quotaflow", path=str(Path(sys.executable).parent))
    assert script, "the quotaflow console script is not installed in the venv"
    proc = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: quotaflow" in proc.stdout and "pricing" in proc.stdout


def test_no_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "quota", "list", "--org", rd.ORG_A)
    assert code == 1
    assert "QUOTAFLOW_DATABASE_URL" in err and err.startswith("quotaflow: error:")


# ---------------------------------------------------------------------------------------
# pricing
# ---------------------------------------------------------------------------------------


def prices(conn: Conn, model: str) -> list[dict[str, Any]]:
    return list(
        conn.cursor(row_factory=dict_row).execute(
            "select * from public.cost_estimates where model = %s order by effective_from",
            (model,),
        )
    )


def test_pricing_import_of_litellm_json(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "import", str(FIXTURE))
    assert code == 0
    assert "5 new, 0 changed, 0 unchanged, 3 skipped" in out

    (gpt,) = prices(conn, "gpt-test-1")
    # 1.1e-07 per token is exactly 0.11 per million (a float would say 0.11000000000000001).
    assert (gpt["provider"], gpt["input_usd_per_mtok"], gpt["output_usd_per_mtok"]) == (
        "openai",
        D("0.11"),
        D("0.44"),
    )
    assert gpt["cached_input_usd_per_mtok"] == D("0.0275") and gpt["effective_to"] is None
    (claude,) = prices(conn, "claude-test-1-20260101")
    assert claude["provider"] == "anthropic"
    assert (claude["cache_write_usd_per_mtok"], claude["long_context_threshold"]) == (
        D("3.75"),
        200000,
    )
    assert (claude["long_input_usd_per_mtok"], claude["long_output_usd_per_mtok"]) == (
        D("6"),
        D("22.5"),
    )
    assert claude["long_cache_write_usd_per_mtok"] == D("7.5")
    # gemini/ (AI Studio) wins over the Vertex AI entry of the same model.
    (gemini,) = prices(conn, "gemini-test-1")
    assert (gemini["provider"], gemini["input_usd_per_mtok"]) == ("google", D("1.25"))
    assert gemini["long_context_threshold"] == 128000
    assert [r["provider"] for r in prices(conn, "grok-test-1")] == ["xai"]
    assert prices(conn, "text-embedding-test")[0]["output_usd_per_mtok"] == 0
    # Imported prices price calls.
    cost = conn.execute("select public.estimate_cost('openai', 'gpt-test-1', 1000000, 1000000)")
    assert cost.fetchone() == (D("0.55"),)

    # The same file again changes nothing.
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "import", str(FIXTURE))
    assert "0 new, 0 changed, 5 unchanged" in out

    # A changed price closes the old row and opens a new one; the others stay untouched.
    untouched = [(r["id"], r["effective_to"]) for r in prices(conn, "grok-test-1")]
    data = json.loads(FIXTURE.read_text())
    data["gpt-test-1"]["output_cost_per_token"] = 5e-07
    changed = tmp_path / "prices.json"
    changed.write_text(json.dumps(data))
    code, out, _ = run(
        capsys, "pricing", "import", str(changed), "--dry-run", "--database-url", db_url
    )
    assert "dry run" in out and "1 changed" in out
    assert len(prices(conn, "gpt-test-1")) == 1
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "import", str(changed), "-v")
    assert "0 new, 1 changed, 4 unchanged" in out
    assert "~ openai/gpt-test-1: output 0.44 -> 0.5" in out
    old, new = prices(conn, "gpt-test-1")
    assert old["effective_to"] == new["effective_from"] and new["effective_to"] is None
    assert (old["output_usd_per_mtok"], new["output_usd_per_mtok"]) == (D("0.44"), D("0.5"))
    assert [(r["id"], r["effective_to"]) for r in prices(conn, "grok-test-1")] == untouched
    assert len(prices(conn, "claude-test-1-20260101")) == 1

    code, out, _ = run(
        capsys, "--database-url", db_url, "pricing", "list", "--model", "test-1", "--provider",
        "openai",
    )  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["provider", "model", "tier", "input", "$/Mtok"]
    assert [line.split()[1] for line in lines[2:]] == ["gpt-test-1"]
    assert "0.5" in lines[2]


def test_pricing_import_of_a_bad_file_is_an_error(
    capsys: pytest.CaptureFixture[str], db_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    code, _, err = run(capsys, "--database-url", db_url, "pricing", "import", str(bad))
    assert code == 1 and "not JSON" in err


def test_pricing_sync_brings_the_catalogue_to_the_shipped_snapshot_once(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn
) -> None:
    """A dry run writes nothing; a sync adds the snapshot's new models and re-prices changed
    ones from now on; a second sync is a no-op; the loaded catalogue equals snapshot +
    overrides field by field; every chat and embedding model of it is priced; a row logged
    before the sync keeps its cost."""
    from quotaflow.cli.pricing import PRICE_FIELDS, shipped_prices

    rows, _ = shipped_prices()
    (org,) = conn.execute(
        "insert into public.organizations (name) values ('Sync Org') returning id"
    ).fetchone()
    before = conn.execute(
        "select cost_usd from public.record_usage(%s, 'before-sync', 'xai', 'grok-4.20',"
        " 100000, 100000)",
        (org,),
    ).fetchone()
    catalogue = "select count(*) from public.cost_estimates"
    (n_before,) = conn.execute(catalogue).fetchone()
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "sync", "--dry-run")
    assert code == 0 and "dry run, nothing written" in out and "+ openai/gpt-6-sol" in out
    assert conn.execute(catalogue).fetchone() == (n_before,)
    # An operator's own price (here on a model the snapshot also lists) is never synced over.
    conn.execute(
        "update public.cost_estimates set input_usd_per_mtok = 0.01, managed = false"
        " where provider = 'openai' and model = 'gpt-5.6-luna' and effective_to is null"
        " and service_tier = 'standard'"
    )
    rows = [
        r for r in rows
        if (r.provider, r.model, r.service_tier) != ("openai", "gpt-5.6-luna", "standard")
    ]  # fmt: skip

    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "sync")
    assert code == 0, out
    summary = out.strip().splitlines()[-1]
    assert " new, " in summary and " 0 new," not in summary
    # grok-4.20 was seeded at $2/$6; LiteLLM lists $1.25/$2.50
    assert "~ xai/grok-4.20: input 2.00 -> 1.25, output 6.00 -> 2.5," in out
    assert "= openai/gpt-5.6-luna: kept the operator's price" in out
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "sync")
    assert code == 0 and ": 0 new, 0 changed," in out and "1 operator price(s) kept" in out
    assert conn.execute(
        "select input_usd_per_mtok from public.cost_estimates"
        " where model = 'gpt-5.6-luna' and effective_to is null and service_tier = 'standard'"
    ).fetchone() == (D("0.01"),)

    current = {
        (r[0], r[1], r[2]): r[3:]
        for r in conn.execute(
            f"select provider, model, service_tier, {', '.join(PRICE_FIELDS)}"
            " from public.cost_estimates where effective_to is null"
        ).fetchall()
    }
    rates: dict[tuple[str, str, str], dict[str, Decimal]] = {}
    for provider, model, tier, dimension, usd in conn.execute(
        "select ce.provider, ce.model, ce.service_tier, r.dimension, r.usd"
        " from public.price_rates r join public.cost_estimates ce on ce.id = r.price_id"
        " where ce.effective_to is null"
    ).fetchall():
        rates.setdefault((provider, model, tier), {})[dimension] = usd
    assert any(r.service_tier == "batch" for r in rows)  # LiteLLM's tier prices are synced
    for row in rows:
        key = (row.provider, row.model, row.service_tier)
        assert current[key] == tuple(row.prices[f] for f in PRICE_FIELDS), key
        assert rates.get(key, {}) == row.rates, key
        # Priced (no QF002), at the snapshot's own rates: 1,000 input and 10 output tokens.
        (cost,) = conn.execute(
            "select public.estimate_usage_cost(%s, %s, 1000, 10, service_tier => %s)",
            (row.provider, row.model, row.service_tier),
        ).fetchone()
        p = row.prices
        expected = (1000 * p["input_usd_per_mtok"] + 10 * p["output_usd_per_mtok"]) / 1_000_000
        assert cost == expected, (row.provider, row.model)
    assert conn.execute(
        "select cost_usd from public.api_usage_logs where request_id = 'before-sync'"
    ).fetchone() == before
    after = conn.execute(
        "select cost_usd from public.record_usage(%s, 'after-sync', 'xai', 'grok-4.20',"
        " 100000, 100000)",
        (org,),
    ).fetchone()
    # 100k in + 100k out: $2/$6 before, $1.25/$2.50 after (below the 200k tier)
    assert before == (Decimal("0.8"),) and after == (Decimal("0.375"),)


def test_pricing_sync_from_a_url_of_a_litellm_map(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn
) -> None:
    """--from URL reads a LiteLLM map from a web server (here one on loopback)."""
    import http.server
    import threading

    body = FIXTURE.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/prices.json"
        code, out, _ = run(capsys, "--database-url", db_url, "pricing", "sync", "--from", url)
    finally:
        server.shutdown()
    assert code == 0 and f"LiteLLM map {url} + 2 override(s): " in out
    assert "+ openai/gpt-test-1" in out
    assert prices(conn, "gpt-test-1")[0]["input_usd_per_mtok"] == D("0.11")


def test_usage_of_an_unknown_model_is_kept_unpriced_then_repriced(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn, tmp_path: Path
) -> None:
    """track_usage of a model the catalogue lacks writes one unpriced row with its tokens;
    after the price is added, `quotaflow pricing reprice` prices it."""
    from quotaflow import Tracker

    (org,) = conn.execute(
        "insert into public.organizations (name) values ('Reprice Org') returning id"
    ).fetchone()
    response = {"usage": {"prompt_tokens": 2000, "completion_tokens": 1000}}
    with Tracker(database_url=db_url, outbox=tmp_path / "o.db") as tracker:
        record = tracker.track_usage(
            {"organization_id": str(org), "request_id": "new-1"}, "openai", "gpt-9-mini", response
        )
    assert record.unpriced and record.cost == 0 and record.log_id is not None
    code, out, _ = run(capsys, "--database-url", db_url, "pricing", "reprice")
    assert code == 0 and "0 row(s) priced, 1 still without a price" in out
    conn.execute(
        "insert into public.cost_estimates (provider, model, input_usd_per_mtok,"
        " output_usd_per_mtok, effective_from) values ('openai', 'gpt-9-mini', 1, 4, '2020-01-01')"
    )
    code, out, _ = run(
        capsys, "--database-url", db_url, "pricing", "reprice", "--organization", "Reprice Org"
    )
    assert code == 0 and "1 row(s) priced, 0 still without a price" in out
    row = conn.execute(
        "select input_tokens, output_tokens, cost_usd, unpriced from public.api_usage_logs"
    ).fetchone()
    assert row == (2000, 1000, Decimal("0.006"), False)  # 2,000 in at $1/M, 1,000 out at $4/M


# ---------------------------------------------------------------------------------------
# quota
# ---------------------------------------------------------------------------------------


def test_quota_set_creates_then_updates_and_list_shows_it(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn
) -> None:
    rd.load(conn)
    url = ["--database-url", db_url]
    code, out, _ = run(
        capsys, *url, "quota", "set", "--org", "Report Org A", "--type", "daily",
        "--metric", "usd", "--limit", "2.50", "--provider", "OpenAI", "--name", "OpenAI daily",
        "--thresholds", "50%,90%",
    )  # fmt: skip
    assert code == 0 and "created" in out
    row = conn.execute(
        "select quota_limit, provider, enforcement, alert_thresholds, name"
        " from public.usage_quotas where organization_id = %s",
        (rd.ORG_A,),
    ).fetchall()
    assert row == [(D("2.50"), "openai", "hard", [D("0.5"), D("0.9")], "OpenAI daily")]

    # The same scope again changes that quota (no second one).
    code, out, _ = run(
        capsys, "quota", "set", "--org", rd.ORG_A, "--type", "daily", "--limit", "5",
        "--provider", "openai", "--enforcement", "soft", *url,
    )  # fmt: skip
    assert code == 0 and "updated" in out
    rows = conn.execute(
        "select quota_limit, enforcement, alert_thresholds from public.usage_quotas"
        " where organization_id = %s",
        (rd.ORG_A,),
    ).fetchall()
    assert rows == [(D("5"), "soft", [D("0.5"), D("0.9")])]

    run(capsys, *url, "quota", "set", "--org", rd.ORG_A, "--window", "monthly", "--metric",
        "requests", "--limit", "1000", "--user", "u1")  # fmt: skip
    code, out, _ = run(capsys, *url, "quota", "list", "--org", rd.ORG_A)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["id", "name", "window", "metric", "enforcement"]
    body = "\n".join(lines[2:])
    assert "OpenAI daily" in body and "provider=openai" in body and "user=u1" in body
    assert len(lines) == 4

    code, out, _ = run(capsys, *url, "quota", "list", "--org", rd.ORG_A, "--json")
    quotas = json.loads(out)
    assert {(q["quota_type"], q["metric"], q["quota_limit"]) for q in quotas} == {
        ("daily", "usd", "5"),
        ("monthly", "requests", "1000"),
    }

    code, _, err = run(capsys, *url, "quota", "list", "--org", "No Such Org")
    assert code == 1 and "no organization named" in err
    code, _, err = run(capsys, *url, "quota", "set", "--org", rd.ORG_A, "--type", "daily",
                       "--limit", "-1")  # fmt: skip
    assert code == 1 and "quota_limit" in err


# ---------------------------------------------------------------------------------------
# report and export
# ---------------------------------------------------------------------------------------

RANGE = ["--start", rd.START.isoformat(), "--end", rd.END.isoformat()]


def test_report_prints_readable_tables(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn
) -> None:
    rd.load(conn)
    code, out, _ = run(capsys, "--database-url", db_url, "report", "--org", rd.ORG_A, *RANGE)
    assert code == 0
    for heading in ("Summary", "By model", "By user (top 10)", "By day"):
        assert f"\n{heading}\n" in out
    assert "requests              6" in out
    assert "cost (USD)            0.0188" in out
    assert "cost (BRL)            0.103" in out
    assert "credits               18.8" in out
    by_model = out.split("By model\n")[1].split("\n\n")[0].splitlines()
    assert by_model[2].split()[:4] == ["openai", "rpt-large", "3", "0.6667"]
    by_user = out.split("By user (top 10)\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[1] for line in by_user[2:]] == ["u1", "u2"]
    by_day = out.split("By day\n")[1].splitlines()
    assert [line.split()[0] for line in by_day[2:]] == [
        "2026-01-09", "2026-01-10", "2026-01-11", "2026-01-12",
    ]  # fmt: skip

    code, out, _ = run(capsys, "--database-url", db_url, "report", "--org", rd.ORG_A, *RANGE,
                       "--json", "--section", "summary")  # fmt: skip
    report = json.loads(out)
    assert report["summary"]["cost_usd"] == "0.0188" and "model" not in report


def test_export_to_a_file_with_a_progress_bar(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn, tmp_path: Path
) -> None:
    rd.load(conn)
    target = tmp_path / "usage.csv"
    code, out, err = run(
        capsys, "--database-url", db_url, "export", "--org", rd.ORG_A, "--format", "csv",
        "--output", str(target), *RANGE,
    )  # fmt: skip
    assert code == 0 and out == ""
    assert "[##############################] 100% 6/6 rows" in err
    assert "exported 6 rows (csv)" in err
    with target.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["request_id"] for r in rows] == [c.request_id for c in rd.CALLS]
    assert sum(D(r["cost_usd"]) for r in rows) == rd.TOTAL_COST
    assert not list(tmp_path.glob("*.partial"))

    code, out, err = run(
        capsys, "--database-url", db_url, "export", "--org", rd.ORG_A, "--format", "jsonl",
        "--failed", "--no-progress",
    )  # fmt: skip
    assert code == 0 and "[" not in err
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["a4"]

    target = tmp_path / "u2.json"
    code, _, _ = run(
        capsys, "--database-url", db_url, "export", "--org", rd.ORG_A, "--format", "json",
        "-o", str(target), "--user", "u2", "--provider", "openai", "--tag", "enem",
    )  # fmt: skip
    assert [r["request_id"] for r in json.loads(target.read_text())] == ["a2"]


# ---------------------------------------------------------------------------------------
# keys, outbox, migrate
# ---------------------------------------------------------------------------------------


def test_keys_create_list_and_revoke(
    capsys: pytest.CaptureFixture[str], db_url: str, conn: Conn
) -> None:
    rd.load(conn)
    url = ["--database-url", db_url]
    code, out, err = run(capsys, *url, "keys", "create", "--org", rd.ORG_A, "--name", "backend",
                         "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["key"].startswith("qf_") and created["organization_id"] == rd.ORG_A
    stored = conn.execute("select name, revoked_at from public.api_keys where id = %s",
                          (created["key_id"],)).fetchone()  # fmt: skip
    assert stored == ("backend", None)

    code, out, _ = run(capsys, *url, "keys", "list", "--org", rd.ORG_A)
    assert "backend" in out and "active" in out and created["key"] not in out

    code, out, _ = run(capsys, *url, "keys", "revoke", created["key_id"], "--org", rd.ORG_A)
    assert code == 0 and "revoked" in out
    code, _, err = run(capsys, *url, "keys", "revoke", created["key_id"])
    assert code == 1 and "no active API key" in err


def test_outbox_status_of_an_empty_outbox(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "outbox", "status", "--path", str(tmp_path / "o.sqlite3"), "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["pending"], status["dead"]) == (0, 0)
