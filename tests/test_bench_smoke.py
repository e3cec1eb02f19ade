"""The benchmark command runs: every part in smoke mode, on its own scratch database."""

from __future__ import annotations

import subprocess
import sys

from tests.db import REPO_ROOT, PgServer


def test_bench_smoke_prints_a_table(pg_server: PgServer) -> None:
    """`bench/run.py --smoke` runs all four parts, exits 0 and prints the table with a row
    per part (figures in smoke mode mean nothing: only that the command works is checked)."""
    out = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--admin-url", pg_server.url("postgres")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("part "))
    assert lines[header + 1].startswith("----")
    table = lines[header + 2:]
    for part in ("1 reserve+settle", "2 added latency", "3 HTTP functions", "4 30-day report"):
        assert any(line.startswith(part) for line in table), out.stdout
    assert "FAILED" not in out.stdout
