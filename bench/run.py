"""quotaflow benchmarks: one command, one table of same-run ratios against targets.

    .venv/bin/python bench/run.py            # full run (~10 min), 5M-row report
    .venv/bin/python bench/run.py --quick    # ~2 min, 500k-row report
    .venv/bin/python bench/run.py --parts 1,4 --quick

Creates a scratch database (sql/bootstrap + supabase/migrations) on the server of
``--admin-url`` (default $QUOTAFLOW_BENCH_ADMIN_URL or postgres@127.0.0.1:5432), runs the parts,
drops it. Parts: 1 reserve+settle vs raw SQL (pgbench), 2 execute_with_tracking added latency,
3 HTTP functions throughput, 4 the 30-day report over a large log. Exits 0 whatever the
figures (benchmarks are not tests); 1 when a part could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import latency, report, sql_calls, throughput
from bench.common import DEFAULT_ADMIN_URL, Row, scratch_database
from bench.servers import servers


@dataclass(frozen=True)
class Mode:
    name: str
    pg_seconds: int  # pgbench -T per measurement (0: -t 20)
    pg_repeats: int
    pg_warmup: int
    pairs: int  # latency pairs per backend
    http_seconds: float
    http_repeats: int
    report_rows: int
    report_runs: int


MODES = {
    "full": Mode("full", 8, 3, 2, 1000, 4, 2, 5_000_000, 15),
    "quick": Mode("quick", 4, 1, 1, 300, 2, 1, 500_000, 5),
    "smoke": Mode("smoke", 0, 1, 0, 20, 0.2, 1, 20_000, 2),
}


def _fmt(v: float) -> str:
    if v != v:  # nan
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _target(row: Row) -> tuple[str, str, str]:
    """(target text, result text, one-line miss explanation or "")."""
    if row.target is None:
        return "-", "-", ""
    on, op, limit = row.target
    actual = row.ratio if on == "ratio" else row.value
    unit = "x raw" if on == "ratio" else row.unit
    text = f"{'>=' if op == '>=' else '<='} {_fmt(limit)} {unit}"
    ok = actual >= limit if op == ">=" else actual <= limit
    factor = actual / limit if op == ">=" else limit / actual
    if ok:
        return text, f"PASS ({factor:.1f}x margin)", ""
    by = f"{_fmt(abs(limit - actual))} {'' if on == 'ratio' else row.unit}".strip()
    result = f"MISS by {by} ({1 / factor:.1f}x off)"
    return text, result, f"{row.part}, {row.figure}: {result}; likely {row.why}"


def print_table(rows: list[Row], notes: list[str], header: str) -> None:
    lines = [("part", "figure", "value", "baseline (same run)", "ratio", "target", "result")]
    misses = []
    for r in rows:
        target, result, miss = _target(r)
        lines.append((
            r.part, r.figure, f"{_fmt(r.value)} {r.unit}",
            f"{_fmt(r.baseline)} {r.unit} {r.baseline_label}", f"{r.ratio:.2f}x", target, result,
        ))
        if miss:
            misses.append(miss)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print()
    print(header)
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if misses:
        print("\nmissed targets:")
        for m in misses:
            print(f"  - {m}")
    if notes:
        print("\nnotes:")
        for n in notes:
            print(f"  {n}")
    sys.stdout.flush()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_const", dest="mode", const="quick",
                   help="short run (~2 min): 500k-row report, one repeat")
    p.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                   help="seconds: proves every part runs; figures mean nothing")
    p.add_argument("--parts", default="1,2,3,4", help="comma-separated parts (default 1,2,3,4)")
    p.add_argument("--rows", type=int, help="log rows for part 4 (default 5M, --quick 500k)")
    p.add_argument("--clients", type=int, default=2 * (os.cpu_count() or 2),
                   help="pgbench clients for part 1 (default 2 per core)")
    p.add_argument("--admin-url",
                   default=os.environ.get("QUOTAFLOW_BENCH_ADMIN_URL", DEFAULT_ADMIN_URL),
                   help="a superuser connection; the scratch database is made on its server")
    p.set_defaults(mode="full")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mode = MODES[args.mode]
    parts = {int(x) for x in args.parts.split(",") if x.strip()}
    rows: list[Row] = []
    notes: list[str] = []
    errors = 0
    load_before = os.getloadavg()[0]
    started = time.monotonic()

    def part(n: int, label: str, fn: Callable[[], tuple[list[Row], list[str]]]) -> None:
        nonlocal errors
        if n not in parts:
            return
        print(f"[{time.monotonic() - started:5.0f}s] part {n}: {label} ...", flush=True)
        try:
            got, more = fn()
        except Exception:
            errors += 1
            notes.append(f"part {n} FAILED: " + traceback.format_exc().strip().splitlines()[-1])
            traceback.print_exc()
            return
        rows.extend(got)
        notes.extend(more)

    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.admin_url))
        part(1, "reserve+settle vs raw SQL (pgbench)",
             lambda: sql_calls.run(url, seconds=mode.pg_seconds, repeats=mode.pg_repeats,
                                   clients=args.clients, warmup=mode.pg_warmup))
        fake: str | None = None
        functions: tuple[str, str] | None = None
        if parts & {2, 3}:
            try:
                fake, functions = stack.enter_context(servers(url))
            except Exception:
                errors += 1
                notes.append("parts 2-3 FAILED to start the fake provider / functions server: "
                             + traceback.format_exc().strip().splitlines()[-1])
                traceback.print_exc()
        if fake is not None:
            part(2, "execute_with_tracking added latency",
                 lambda: (latency.run(url, fake, functions, pairs=mode.pairs), []))
        if functions is not None:
            part(3, "HTTP functions throughput",
                 lambda: (throughput.run(functions, url, seconds=mode.http_seconds,
                                         repeats=mode.http_repeats), []))
        rows_4 = args.rows or mode.report_rows
        part(4, f"30-day report over {rows_4:,} log rows",
             lambda: report.run(url, rows=rows_4, runs=mode.report_runs))

    header = (
        f"quotaflow bench ({mode.name}) {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC,"
        f" {os.cpu_count()} cores, load average {load_before:.1f} at start /"
        f" {os.getloadavg()[0]:.1f} at end, {time.monotonic() - started:.0f} s"
    )
    if mode.name == "smoke":
        header += "  [smoke mode: proves the parts run; the figures mean nothing]"
    print_table(rows, notes, header)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
